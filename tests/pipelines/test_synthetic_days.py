"""pipelines.synthetic --days / --start-day: consecutive days of one world."""

import collections
import csv

import pytest

from pipelines import synthetic
from pipelines.synthetic.days import DAY_MS, generate_days
from pipelines.synthetic.regimes import REGIMES, START_MS


def rows(directory, name):
    with open(directory / f"{name}.csv", newline="") as f:
        return list(csv.reader(f))[1:]


def test_a_day_is_the_same_in_every_window_and_brings_20_percent_new_users_and_items(tmp_path):
    generate_days(str(tmp_path / "w12"), 2, 1, users=50, items=200, seed=4)
    generate_days(str(tmp_path / "w1"), 1, 1, users=50, items=200, seed=4)
    assert synthetic.main(["--output", str(tmp_path / "w2"), "--start-day", "2", "--days", "1",
                           "--users", "50", "--items", "200", "--seed", "4"]) == 0
    both, one, two = (tmp_path / n for n in ("w12", "w1", "w2"))
    assert sorted(rows(both, "rec_inter")) == sorted(rows(one, "rec_inter")
                                                     + rows(two, "rec_inter"))
    assert sorted(rows(both, "src_inter")) == sorted(rows(one, "src_inter")
                                                     + rows(two, "src_inter"))
    # an item's and a user's features (but the activity levels) are the same in every window
    items = {r[0]: r for r in rows(both, "item_features")}
    assert all(items[r[0]] == r for r in rows(one, "item_features"))
    users = {r[0]: r[3:] for r in rows(both, "user_features")}
    assert all(users[r[0]] == r[3:] for r in rows(one, "user_features"))
    # day 1: users 1..50 and 200 items; day 2: 10 new users and 40 new items, all of them active
    day1_users = {int(r[0]) for r in rows(one, "rec_inter")}
    day2_users = {int(r[0]) for r in rows(two, "rec_inter")}
    assert day1_users == set(range(1, 51)) and day2_users == set(range(1, 61))
    day1_items = {r[0] for r in rows(one, "item_features")}
    day2_items = {r[0] for r in rows(two, "item_features")}
    assert len(day1_items) == 200 and len(day2_items) == 240 and day1_items < day2_items
    shown1 = {r[6] for r in rows(one, "src_inter")} | {r[1] for r in rows(one, "rec_inter")}
    assert shown1 <= day1_items                   # nothing appears before its day
    shown2 = {r[1] for r in rows(two, "rec_inter")}
    assert len(shown2 - day1_items) > 20          # new items are shown on their first day
    # each day's rows lie in its 24 h
    for directory, day in ((one, 1), (two, 2)):
        times = [float(r[5]) for r in rows(directory, "rec_inter")]
        assert START_MS + (day - 1) * DAY_MS <= min(times) and max(times) < START_MS + day * DAY_MS
    # popularity drifts: the most shown items of day 1 and day 2 differ
    top = [{i for i, _ in collections.Counter(r[1] for r in rows(d, "rec_inter")).most_common(20)}
           for d in (one, two)]
    assert len(top[0] & top[1]) < 20


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_every_regime_writes_days(tmp_path, regime):
    manifest = generate_days(str(tmp_path), 2, 1, users=30, items=200, seed=1, regime=regime)
    assert manifest["days"]["2"]["users"] == 36 and manifest["rows"]["rec_inter"] > 30 * 2 * 3
    day1 = {r[0] for r in rows(tmp_path, "item_features")}
    assert {r[1] for r in rows(tmp_path, "rec_inter")} <= day1


def test_days_flag_errors(tmp_path, capsys):
    for argv in (["--days", "0"], ["--days", "40"], ["--days", "2", "--bad-rows", "3"]):
        with pytest.raises(SystemExit) as info:
            synthetic.main(["--output", str(tmp_path), *argv])
        assert info.value.code == 2
    assert "error" in capsys.readouterr().err
