"""benchmarks.continuous: the bar, the paired intervals and a two-day warm window (in a file of
their own, so that the test processes run them beside tests/qrec_tf/test_continuous.py's daily
loop instead of after it)."""

import json
import os

import numpy as np
import pytest

from qrec_tf import schema as S
from tests.qrec_tf.test_continuous import TINY


def test_the_benchmark_bar_is_checked_day_by_day_at_its_edges():
    from benchmarks.continuous import bar, chain_name
    assert [chain_name(1, None), chain_name(2, None), chain_name(3, "ep1")] == \
        ["warm", "warm_w2", "warm_w3_ep1"]
    day = {"warm_auc": 0.6400, "full_auc": 0.6450, "new_day_auc": 0.6300,
           "warm_over_full_time": 0.49}
    assert bar([day]) == {"warm_within_0.005_of_full": True, "warm_under_half_the_time": True,
                          "warm_above_new_day": True}
    # one day 0.0051 below the full retrain, one at exactly half its time, one tied with the
    # new-day model: each fails its part
    worse = [day, {**day, "warm_auc": 0.6399}]
    assert not bar(worse)["warm_within_0.005_of_full"] and bar(worse)["warm_above_new_day"]
    assert not bar([day, {**day, "warm_over_full_time": 0.5}])["warm_under_half_the_time"]
    assert not bar([{**day, "new_day_auc": 0.6400}])["warm_above_new_day"]


def test_paired_intervals_need_the_same_rows_and_give_each_models_difference():
    from benchmarks.continuous import paired
    rows, labels = [(1, 1, 0), (1, 2, 1), (2, 1, 0), (2, 2, 1)], np.array([0, 1, 0, 1])
    # hand-computed AUCs: a ranks both positives above both negatives (1.0); b ranks 1 of the
    # 4 (positive, negative) pairs right (0.8 > 0.2): 0.25
    a = {"rows": rows, "labels": labels, "scores": np.array([.1, .9, .2, .8]), "auc": 1.0}
    b = {**a, "scores": np.array([.9, .1, .2, .8]), "auc": 0.25}
    result = paired({"a": a, "b": b, "same": a}, "a", resamples=40)
    assert result["b"]["difference"] == 0.75 and result["same"] == {
        "difference": 0.0, "low": 0.0, "high": 0.0}
    assert -1.0 <= result["b"]["low"] <= 0.75 <= result["b"]["high"] <= 1.0
    with pytest.raises(RuntimeError, match="rows differ"):
        paired({"a": a, "b": {**b, "rows": rows[::-1]}}, "a", resamples=5)


@pytest.mark.slow
def test_a_two_day_warm_window_trains_on_both_days_from_day_ones_model(tmp_path):
    from benchmarks import continuous
    work = str(tmp_path / "bench")
    tiny = [f"--set={override}" for override in TINY if "oov" not in override]
    assert continuous.main(["--days", "2", "--users", "40", "--items", "200", "--workdir", work,
                            "--warm-window", "2", "--warm-context-days", "0", "--warm-set", "",
                            "--bootstrap", "20",
                            *tiny]) == 0
    result = json.load(open(os.path.join(work, "continuous_warm_w2_own.json")))
    (row,) = result["daily"]
    assert (row["day"], row["chain"], row["window_days"], row["same_test_rows"]) == \
        (2, "warm_w2", "1-2", True)
    window, day_only, full = (os.path.join(work, name) for name in
                              ("data_w2_day_2", "data_day_2", "data_1_2"))

    def train_rows(data_dir):
        return json.load(open(os.path.join(data_dir, S.STATS_FILE)))["examples"]["train"]["count"]
    # the window of days 1-2 is all the days: as many training rows as the full build, more
    # than day 2 alone; its vocabularies extend day 1's build, and its model day 1's model
    assert train_rows(window) == train_rows(full) > train_rows(day_only) > 0
    assert S.read_lineage(window)["extends"] == \
        S.read_lineage(os.path.join(work, "data_1_1"))["build_id"]
    run = json.load(open(os.path.join(work, "warm_w2_day_2", "run.json")))
    assert run["warm_start"]["from"] == os.path.abspath(os.path.join(work, "full_day_1"))
    assert row["warm_minus_full"]["low"] <= row["warm_minus_full"]["difference"] <= \
        row["warm_minus_full"]["high"]
