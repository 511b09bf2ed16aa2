"""The interest-shift / correlation job: measures against hand-computed values, the Beam job on a
hand-written log worked out by hand, deterministic draws, the shift on generated logs, the CLI."""

from __future__ import annotations

import collections
import csv
import json
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import analysis, kuaisar, shift_measures, synthetic
from qrec_tf import schema as S
from tests.pipelines import hand_log

REPO = Path(__file__).resolve().parents[2]
ONE_PROCESS = "--direct_running_mode=in_memory"  # worker start-up would dominate tiny jobs

# --- the hand-written log -------------------------------------------------------------------------
# Categories (first level): items 11, 12 -> 1; 21, 22 -> 2; 31 -> 3; 41 -> 4; item 99 has no
# item_features row (unknown category).
ITEMS = [hand_log.item(11, 1, 1, 10), hand_log.item(12, 1, 1, 10), hand_log.item(21, 2, 2, 20),
         hand_log.item(22, 2, 2, 20), hand_log.item(31, 3, 3, 30), hand_log.item(41, 4, 4, 40)]
SEARCH = [
    # user 1: session 101 at t=1000 shows 11 (clicked) and 21; session 102 at t=3000 shows 12
    # (clicked), 31 (clicked) and 22.
    hand_log.src(1, 101, 1000, [7, 8], 11, 1), hand_log.src(1, 101, 1000, [7, 8], 21, 0),
    hand_log.src(1, 102, 3000, [9], 12, 1), hand_log.src(1, 102, 3000, [9], 31, 1),
    hand_log.src(1, 102, 3000, [9], 22, 0),
    # user 2: session 201 at t=1000 shows 31 (clicked), 22 and the uncategorised 99.
    hand_log.src(2, 201, 1000, [5], 31, 1), hand_log.src(2, 201, 1000, [5], 22, 0),
    hand_log.src(2, 201, 1000, [5], 99, 0),
    # user 4 (search only) clicks 12 and 21; user 5 searches without clicking.
    hand_log.src(4, 401, 100, [6], 12, 1), hand_log.src(4, 401, 100, [6], 21, 1),
    hand_log.src(5, 501, 100, [6], 11, 0),
]
FEED = [
    hand_log.rec(1, 21, 4000, 1), hand_log.rec(1, 11, 2000, 1), hand_log.rec(1, 31, 500, 1),
    hand_log.rec(1, 12, 2500, 0), hand_log.rec(1, 22, 3000, 1),
    hand_log.rec(2, 11, 2000, 1), hand_log.rec(2, 99, 2500, 1), hand_log.rec(2, 41, 3000, 1),
    hand_log.rec(3, 11, 1000, 1),  # user 3: feed only
    hand_log.rec(5, 12, 200, 0),
]
BAD_LINES = {kuaisar.REC_INTER: ["x,11,1000.0,2000.0,t,2000.0,1,0,0,0,0,0"],
             kuaisar.SRC_INTER: ['1,103,t,5000,"[]",USER_INPUT,11,1,VIDEO']}
FILES = {kuaisar.REC_INTER: [hand_log.REC_HEADER, *FEED],
         kuaisar.SRC_INTER: [hand_log.SRC_HEADER, *SEARCH],
         kuaisar.USER_FEATURES: [hand_log.USER_HEADER],
         kuaisar.ITEM_FEATURES: [hand_log.ITEM_HEADER, *ITEMS]}

# Search clicks with a category, all users: category 1: 11, 12 (user 1), 12 (user 4) = 3;
# category 2: 21 (user 4) = 1; category 3: 31 (users 1, 2) = 2. p_src = {1: 1/2, 2: 1/6, 3: 1/3}.
P_SRC = {1: 1 / 2, 2: 1 / 6, 3: 1 / 3}
# Feed clicks (u, item, t) -> (category, |s|, I(c in s)); s = categorised search impressions
# strictly before t.
#   u1 11@2000: s = {1, 2} (session 101)                   -> (1, 2, 1), E = 1 - (1/2)^2 = 3/4
#   u1 22@3000: s = {1, 2} (session 102 is not before 3000)  -> (2, 2, 1), E = 1 - (5/6)^2 = 11/36
#   u1 21@4000: s = {1, 2, 1, 3, 2}                        -> (2, 5, 1), E = 1 - (5/6)^5 = 4651/7776
#   u2 11@2000: s = {3, 2} (item 99 has no category)       -> (1, 2, 0), E = 3/4
# Excluded: u1 31@500 and u3 11@1000 (no earlier search impression), u2 99@2500 (unknown
# category), u2 41@3000 (category 4: nobody clicked it in search, p_src = 0).
ELIGIBLE = {(1, 2000, 11): (1, 2, 1), (1, 3000, 22): (2, 2, 1), (1, 4000, 21): (2, 5, 1),
            (2, 2000, 11): (1, 2, 0)}
# R1 = sum I / sum E = 3 / (5832 + 2376 + 4651 + 5832) / 7776 = 3 * 7776 / 18691
R1 = 23328 / 18691                                   # 1.248087...
# R2 = mean(I / E) = (4/3 + 36/11 + 7776/4651 + 0) / 4
R2 = (4 / 3 + 36 / 11 + 7776 / 4651) / 4             # 1.569490...
# JS of user 1: search clicks {1: 2, 3: 1} -> P = (2/3, 0, 1/3) over categories (1, 2, 3); feed
# clicks {1: 1, 2: 2, 3: 1} -> Q = (1/4, 1/2, 1/4); M = (P + Q) / 2 = (11/24, 1/4, 7/24).
# KL(P||M) = 2/3 log2(16/11) + 1/3 log2(8/7); KL(Q||M) = 1/4 log2(6/11) + 1/2 log2(2) +
# 1/4 log2(6/7); JS = (KL(P||M) + KL(Q||M)) / 2.
JS_USER1 = (2 / 3 * math.log2(16 / 11) + 1 / 3 * math.log2(8 / 7)
            + 1 / 4 * math.log2(6 / 11) + 1 / 2 + 1 / 4 * math.log2(6 / 7)) / 2   # 0.325190...
# User 2: search clicks only category 3, feed clicks categories 1 and 4 (99 unknown): disjoint.
JS_USER2 = 1.0


def run_job(input_dir, output_dir, *extra) -> dict:
    return analysis.run(["--input", str(input_dir), "--output", str(output_dir), ONE_PROCESS,
                         *extra])


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    root = tmp_path_factory.mktemp("hand")
    hand_log.write(root / "in", files=FILES, extra=BAD_LINES)
    return root, run_job(root / "in", root / "out")


# --- the measures ---------------------------------------------------------------------------------
def test_js_divergence_hand_values():
    js = shift_measures.js_divergence
    assert js({1: 2, 2: 2}, {1: 5, 2: 5}) == 0.0          # identical (any scale)
    assert js({1: 3}, {2: 1, 3: 1}) == 1.0                # disjoint
    assert js({1: 2, 3: 1}, {1: 1, 2: 2, 3: 1}) == pytest.approx(JS_USER1, abs=1e-12)
    assert JS_USER1 == pytest.approx(0.325190, abs=1e-6)
    assert js({1: 1, 2: 2, 3: 1}, {1: 2, 3: 1}) == pytest.approx(JS_USER1, abs=1e-12)
    # One category shared half-half: P = (1, 0), Q = (1/2, 1/2), M = (3/4, 1/4):
    # JS = (log2(4/3) + 1/2 log2(2/3) + 1/2 log2(2)) / 2 = 0.311278...
    assert shift_measures.js_divergence({1: 1}, {1: 1, 2: 1}) == pytest.approx(0.311278, abs=1e-6)
    with pytest.raises(ValueError, match="non-empty"):
        shift_measures.js_divergence({}, {1: 1})


def test_expected_hit_rate_and_sample_keys():
    hit_rate = shift_measures.expected_hit_rate
    assert hit_rate(0.5, 2) == pytest.approx(0.75)
    assert hit_rate(1 / 6, 5) == pytest.approx(4651 / 7776, abs=1e-15)
    assert hit_rate(0.3, 0) == 0.0 and hit_rate(1.0, 3) == 1.0
    assert hit_rate(1e-12, 10) == pytest.approx(1e-11, rel=1e-9)  # no cancellation
    # Keys are stable across processes and versions (a change would change every draw) ...
    # (the first 8 bytes of blake2b(b"0/user/1", digest_size=8), big-endian)
    key = shift_measures.sample_key
    assert key(0, "user", 1) == key(0, "user", 1) == 0xA1AF42E2073501DB
    # ... and differ by seed, kind and id.
    keys = {key(0, "user", 1), key(1, "user", 1), key(0, "sample", 1), key(0, "user", 2),
            key(0, "user", 1, 2)}
    assert len(keys) == 5


def test_shift_summary_numbers():
    summary = shift_measures.shift_summary([0.0, 0.25, 0.5, 1.0])
    assert summary["users"] == 4 and summary["share_js_le_0_5"] == 0.75  # 0.5 counts as <= 0.5
    assert summary["share_shifted"] == 0.25 and summary["mean"] == pytest.approx(0.4375)
    assert summary["quantiles"]["0.5"] == pytest.approx(0.375)  # linear, between 0.25 and 0.5
    assert summary["histogram"]["counts"] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0,
                                              1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert shift_measures.shift_summary([])["share_js_le_0_5"] is None


def test_analyse_user_ignores_row_order_and_uses_strictly_earlier_searches():
    category_of = {11: 1, 12: 1, 21: 2, 22: 2, 31: 3, 41: 4}
    rows = collections.defaultdict(lambda: collections.defaultdict(list))
    for name, lines in ((kuaisar.REC_INTER, FEED), (kuaisar.SRC_INTER, SEARCH)):
        parse = kuaisar.LineParser(kuaisar.parse_header(name, FILES[name][0]))
        for line in lines:
            user, row = parse(line)
            rows[user][name].append(row)
    feed, search = kuaisar.REC_INTER, kuaisar.SRC_INTER
    one = shift_measures.analyse_user(1, rows[1][feed], rows[1][search], category_of)
    again = shift_measures.analyse_user(1, rows[1][feed][::-1], rows[1][search][::-1], category_of)
    assert one == again
    assert [(s.timestamp, s.item_id, s.category, s.s_size, s.in_s) for s in one.samples] == [
        (2000, 11, 1, 2, 1), (3000, 22, 2, 2, 1), (4000, 21, 2, 5, 1)]
    assert one.search_clicks == {1: 2, 3: 1} and one.feed_clicks == {1: 1, 2: 2, 3: 1}
    assert one.js == pytest.approx(JS_USER1)
    two = shift_measures.analyse_user(2, rows[2][feed], rows[2][search], category_of)
    assert two.js == JS_USER2 and two.stats["feed_positives/unknown_category"] == 1
    assert shift_measures.analyse_user(5, rows[5][feed], rows[5][search], category_of).js is None


# --- the Beam job on the hand log -----------------------------------------------------------------
def test_correlation_matches_the_hand_computation(hand):
    root, report = hand
    corr = report["correlation"]
    assert corr["samples"] == 4
    assert corr["r_corr_1"] == pytest.approx(R1, abs=1e-12)
    assert corr["r_corr_2"] == pytest.approx(R2, abs=1e-12)
    assert corr["hit_rate"] == 0.75
    assert {int(c): p for c, p in corr["p_src"].items()} == pytest.approx(P_SRC)
    rows = read_csv(root / "out" / analysis.SAMPLES_FILE)
    assert {(int(r["user_id"]), int(r["timestamp"]), int(r["item_id"])):
            (int(r["category"]), int(r["s_size"]), int(r["in_s"])) for r in rows} == ELIGIBLE
    for r in rows:
        assert float(r["expected"]) == pytest.approx(
            1 - (1 - P_SRC[int(r["category"])]) ** int(r["s_size"]))
    assert report["feed_positives"] == {
        "total": 8, "unknown_category": 1, "no_earlier_search_impression": 2,
        "with_earlier_search_impression": 5, "category_never_clicked_in_search": 1,
        "eligible": 4, "sampled": 4}


def test_interest_shift_and_user_accounting(hand):
    root, report = hand
    js = {int(r["user_id"]): (float(r["js"]), int(r["search_clicks"]), int(r["feed_clicks"]))
          for r in read_csv(root / "out" / analysis.JS_FILE)}
    assert js == {1: (pytest.approx(JS_USER1, abs=1e-12), 3, 4), 2: (JS_USER2, 1, 2)}
    shift = report["interest_shift"]
    assert shift["users"] == 2 and shift["share_js_le_0_5"] == 0.5
    assert shift["mean"] == pytest.approx((JS_USER1 + JS_USER2) / 2)
    assert sum(shift["histogram"]["counts"]) == 2 and shift["histogram"]["counts"][-1] == 1
    # Nobody is silently dropped: 3 = feed only, 4 = search only, 5 = no click at all.
    assert report["users"] == {"total": 5, "with_both": 2, "without_search_clicks": 1,
                               "without_feed_clicks": 1, "without_any_clicks": 1,
                               "no_search_rows": 1, "no_feed_rows": 1, "sampled": 2}
    assert report["clicks"] == {"search": 6, "search_unknown_category": 0, "feed": 8,
                                "feed_unknown_category": 1}
    assert report["search_impressions"] == {"total": 11, "unknown_category": 1}


def test_malformed_lines_are_counted_and_kept_as_dead_letters(hand):
    root, report = hand
    assert report["rows"][kuaisar.REC_INTER] == {"rows_read": 11, "rows_used": 10,
                                                 "rows_rejected": 1,
                                                 "rejected_by_reason": {"bad_int:user_id": 1}}
    assert report["rows"][kuaisar.SRC_INTER] == {
        "rows_read": 12, "rows_used": 11, "rows_rejected": 1,
        "rejected_by_reason": {"empty_list:keyword": 1}}
    assert report["rows"][kuaisar.ITEM_FEATURES] == {"rows_read": 6, "rows_used": 6,
                                                     "rows_rejected": 0}
    letters = [json.loads(line) for path in (root / "out" / S.DEAD_LETTER_DIR).iterdir()
               for line in path.read_text().splitlines()]
    assert sorted((d["file"], d["reason"]) for d in letters) == [
        (kuaisar.REC_INTER, "bad_int:user_id"), (kuaisar.SRC_INTER, "empty_list:keyword")]


def test_outputs_exist_and_the_histogram_is_a_png(hand):
    root, report = hand
    assert sorted(p.name for p in (root / "out").iterdir()) == sorted(analysis.OUTPUTS)
    assert png_size(root / "out" / analysis.HISTOGRAM_FILE) == (800, 500)
    assert json.loads((root / "out" / analysis.ANALYSIS_FILE).read_text()) == report
    assert report["arguments"]["users"] == analysis.DEFAULT_USERS


# --- generated logs: no shift vs strong shift -----------------------------------------------------
def test_share_of_shifted_users_follows_the_planted_shift(tmp_path):
    reports = {}
    for mix in (1.0, 0.0):  # 1 = search taste is the feed taste; 0 = independent of it
        log = tmp_path / f"log{mix}"
        manifest = synthetic.generate(str(log), users=120, items=400, seed=3, rec_per_user=15,
                                      sessions_per_user=6, search_feed_mix=mix)
        assert manifest["planted"]["search_feed_mix"] == mix
        reports[mix] = run_job(log, tmp_path / f"out{mix}", "--seed", "1")
    same, shifted = reports[1.0]["interest_shift"], reports[0.0]["interest_shift"]
    assert same["users"] > 90 and shifted["users"] > 90  # ~5% feed-only, ~2% search-only users
    assert same["share_js_le_0_5"] > shifted["share_js_le_0_5"] + 0.25, (same, shifted)
    assert same["mean"] < shifted["mean"] - 0.15
    # Feed clicks land in categories the user searched more often when search follows the feed.
    assert (reports[1.0]["correlation"]["r_corr_1"]
            > reports[0.0]["correlation"]["r_corr_1"] + 0.05)


def test_generator_rejects_a_mix_outside_0_1(tmp_path):
    with pytest.raises(synthetic.ArgumentError, match=r"--search-feed-mix must be in \[0, 1\]"):
        synthetic.generate(str(tmp_path), users=5, items=40, search_feed_mix=1.5)


# --- command line ---------------------------------------------------------------------------------
def test_cli_run_draws_the_smallest_keys_of_the_seed(hand, tmp_path):
    """The real command line, end to end; its draws are the seed's smallest keys."""
    root, _ = hand
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.analysis", "--input", str(root / "in"), "--output",
         str(tmp_path), "--users", "1", "--samples", "2", "--seed", "7", ONE_PROCESS],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "sampled 2: R_corr^1 = " in result.stdout and "JS <= 0.5 for " in result.stdout
    user = min((1, 2), key=lambda u: shift_measures.sample_key(7, "user", u))
    samples = sorted(ELIGIBLE, key=lambda s: shift_measures.sample_key(7, "sample", *s))[:2]
    assert [int(r["user_id"]) for r in read_csv(tmp_path / analysis.JS_FILE)] == [user]
    assert sorted((int(r["user_id"]), int(r["timestamp"]), int(r["item_id"]))
                  for r in read_csv(tmp_path / analysis.SAMPLES_FILE)) == sorted(samples)
    report = json.loads((tmp_path / analysis.ANALYSIS_FILE).read_text())
    assert report["users"]["sampled"] == 1 and report["feed_positives"]["sampled"] == 2
    assert report["users"]["with_both"] == 2  # the accounting still covers every user
    assert report["arguments"] == {"input": str(root / "in"), "users": 1, "samples": 2,
                                   "seed": 7}


def test_cli_missing_input_dir_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert analysis.main(["--input", str(missing), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error == (f"python -m pipelines.analysis: error: input directory {missing} does not "
                     "exist\n")
    assert not (tmp_path / "out").exists()


def test_cli_user_mistakes(hand, tmp_path, capsys):
    root, _ = hand
    (tmp_path / "in").mkdir()
    assert analysis.main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]) == 2
    assert "rec_inter.csv (or rec_inter.csv.gz) not found" in capsys.readouterr().err
    assert analysis.main(["--input", str(root / "in"), "--output", str(root / "out")]) == 2
    assert "pass --overwrite" in capsys.readouterr().err  # an earlier run is never mixed in
    for flag in ("--users", "--samples"):
        with pytest.raises(SystemExit) as exit_info:
            analysis.main(["--input", "x", "--output", "y", flag, "0"])
        assert exit_info.value.code == 2
        assert f"{flag} must be >= 1 (got 0)" in capsys.readouterr().err
