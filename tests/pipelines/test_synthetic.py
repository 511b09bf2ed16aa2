"""The synthetic KuaiSAR-format generator: format, determinism, bad rows, and the planted structure.

Everything is re-measured from the written files with kuaisar's own parser (not from the
generator's internals), so these tests check what a consumer of the files would see.
"""

from __future__ import annotations

import collections
import csv
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import kuaisar, synthetic

REPO = Path(__file__).resolve().parents[2]
DAY_MS = 24 * 3600 * 1000


# --- helpers -------------------------------------------------------------------------------------
def data_lines(directory: Path, name: str) -> tuple[bytes, list[bytes]]:
    """(header line, data lines) of one plain .csv file, as the Beam job reads them."""
    lines = (directory / f"{name}.csv").read_bytes().split(b"\n")
    assert lines[-1] == b"", "file must end with a newline"
    return lines[0], lines[1:-1]


def parse_all(directory: Path) -> tuple[dict[str, list], dict[str, dict[int, str]]]:
    """Per file: the parsed good rows, and {1-based line number: reason} of the rejected ones."""
    good: dict[str, list] = {}
    bad: dict[str, dict[int, str]] = {}
    for name in kuaisar.LOG_FILES:
        header, lines = data_lines(directory, name)
        parse = kuaisar.LineParser(kuaisar.parse_header(name, header))
        good[name], bad[name] = [], {}
        for number, line in enumerate(lines, start=2):
            try:
                good[name].append(parse(line))
            except kuaisar.MalformedRow as error:
                bad[name][number] = error.reason
    return good, bad


def js_divergence(p: collections.Counter, q: collections.Counter) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two count distributions."""
    keys = set(p) | set(q)
    np_, nq = sum(p.values()), sum(q.values())
    total = 0.0
    for k in keys:
        a, b = p[k] / np_, q[k] / nq
        m = (a + b) / 2
        total += (a * math.log2(a / m) if a else 0.0) + (b * math.log2(b / m) if b else 0.0)
    return total / 2


# --- fixtures ------------------------------------------------------------------------------------
BAD = 13  # > 2 full cycles of the five kinds, and not a multiple of four files


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict]:
    """A small log with malformed lines, shared by the format tests."""
    out = tmp_path_factory.mktemp("sample")
    return out, synthetic.generate(str(out), users=120, items=300, seed=5, bad_rows=BAD,
                                   rec_per_user=20, sessions_per_user=5)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict, dict]:
    """A clean log, big enough to measure the planted effects; with parsed rows and item topics."""
    out = tmp_path_factory.mktemp("planted")
    manifest = synthetic.generate(str(out), users=500, items=2000, seed=11)
    good, bad = parse_all(out)
    assert not any(bad.values())
    return out, manifest, good


# --- determinism ---------------------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_and_another_seed_differs(sample, tmp_path):
    out, manifest = sample
    again = synthetic.generate(str(tmp_path / "again"), users=120, items=300, seed=5,
                               bad_rows=BAD, rec_per_user=20, sessions_per_user=5)
    other = synthetic.generate(str(tmp_path / "other"), users=120, items=300, seed=6,
                               bad_rows=BAD, rec_per_user=20, sessions_per_user=5)
    assert again == manifest and other != manifest
    for file in [f"{name}.csv" for name in kuaisar.LOG_FILES] + [synthetic.MANIFEST]:
        assert (tmp_path / "again" / file).read_bytes() == (out / file).read_bytes(), file
        assert (tmp_path / "other" / file).read_bytes() != (out / file).read_bytes(), file


def test_bad_rows_are_added_without_changing_the_good_lines(sample, tmp_path):
    out, manifest = sample
    clean = synthetic.generate(str(tmp_path), users=120, items=300, seed=5, rec_per_user=20,
                               sessions_per_user=5)
    bad_numbers = collections.defaultdict(set)
    for entry in manifest["bad_lines"]:
        bad_numbers[entry["file"]].add(entry["line_number"])
    for name in kuaisar.LOG_FILES:
        _, dirty_lines = data_lines(out, name)
        _, clean_lines = data_lines(tmp_path, name)
        kept = [line for n, line in enumerate(dirty_lines, start=2) if n not in bad_numbers[name]]
        assert kept == clean_lines, name
        assert clean["rows"][name] + manifest["bad_rows"][name] == manifest["rows"][name]


def test_gzip_output_decompresses_to_the_plain_bytes(sample, tmp_path):
    out, _ = sample
    for run in ("a", "b"):
        synthetic.generate(str(tmp_path / run), users=120, items=300, seed=5, bad_rows=BAD,
                           rec_per_user=20, sessions_per_user=5, gzip=True)
    assert sorted(os.listdir(tmp_path / "a")) == sorted(
        [f"{name}.csv.gz" for name in kuaisar.LOG_FILES] + [synthetic.MANIFEST])
    for name in kuaisar.LOG_FILES:
        packed = (tmp_path / "a" / f"{name}.csv.gz").read_bytes()
        assert gzip.decompress(packed) == (out / f"{name}.csv").read_bytes(), name
        # No file name or mtime in the gzip header: the compressed bytes are reproducible too.
        assert packed == (tmp_path / "b" / f"{name}.csv.gz").read_bytes(), name


# --- format --------------------------------------------------------------------------------------
def test_headers_are_exactly_kuaisars_columns(sample):
    out, _ = sample
    for name in kuaisar.LOG_FILES:
        header, _ = data_lines(out, name)
        assert header == ",".join(kuaisar.COLUMNS[name]).encode(), name
        assert kuaisar.parse_header(name, header).names == kuaisar.COLUMNS[name]


def test_exactly_the_manifest_bad_lines_are_rejected(sample):
    out, manifest = sample
    good, bad = parse_all(out)
    rejected = {(name, n) for name in kuaisar.LOG_FILES for n in bad[name]}
    listed = {(b["file"], b["line_number"]) for b in manifest["bad_lines"]}
    assert len(manifest["bad_lines"]) == BAD and rejected == listed
    for name in kuaisar.LOG_FILES:
        _, lines = data_lines(out, name)
        assert manifest["rows"][name] == len(lines) == len(good[name]) + len(bad[name])
        assert manifest["bad_rows"][name] == len(bad[name])
    # spread over all files
    assert all(manifest["bad_rows"][name] > 0 for name in kuaisar.LOG_FILES)
    assert sum(manifest["bad_rows_by_kind"].values()) == BAD
    assert set(manifest["bad_rows_by_kind"]) == set(synthetic.BAD_KINDS)
    assert min(manifest["bad_rows_by_kind"].values()) >= 2
    # Each kind is rejected for the reason it was planted for.
    expected = {"truncated": "field_count:", "non_numeric_id": "bad_int:",
                "bad_keyword": ("bad_list:keyword", "empty_list:keyword"), "nul_byte": "nul_byte",
                "empty_required": "empty:"}
    for entry in manifest["bad_lines"]:
        reason = bad[entry["file"]][entry["line_number"]]
        assert reason.startswith(expected[entry["kind"]]), (entry, reason)
        if entry["kind"] == "bad_keyword":
            assert entry["file"] == kuaisar.SRC_INTER


def test_values_follow_kuaisar_conventions(planted):
    out, manifest, good = planted
    # Text columns the parser does not read: rec `time` and src `search_session_time`.
    for name, ts_col, time_col in [
            (kuaisar.REC_INTER, "timestamp", "time"),
            (kuaisar.SRC_INTER, "search_session_timestamp", "search_session_time")]:
        _, lines = data_lines(out, name)
        cols = kuaisar.COLUMNS[name]
        for line in lines[:3000]:
            fields = next(csv.reader([line.decode()]))
            ts = fields[cols.index(ts_col)]
            assert ts.endswith(".0") if name == kuaisar.REC_INTER else ts.isdigit()
            assert fields[cols.index(time_col)] == kuaisar.beijing_time(int(float(ts)))
    start = synthetic.START_MS
    end = start + synthetic.SPAN_DAYS * DAY_MS
    rec_users = {u for u, _ in good[kuaisar.REC_INTER]}
    src_users = {u for u, _ in good[kuaisar.SRC_INTER]}
    assert all(start <= ts < end for _, (ts, _, _) in good[kuaisar.REC_INTER])
    assert all(start <= row[0] < end for _, row in good[kuaisar.SRC_INTER])
    assert {c for _, (_, _, c) in good[kuaisar.REC_INTER]} == {0, 1}

    # Item ids: distinct, sparse (not 0..N); categories: second-level ids unique across first-level.
    items = dict(good[kuaisar.ITEM_FEATURES])
    assert len(items) == len(good[kuaisar.ITEM_FEATURES]) == 2000
    assert min(items) >= synthetic.ITEM_ID_BASE and max(items) - min(items) > 2 * len(items)
    first_of_second: dict[int, set] = collections.defaultdict(set)
    for author, first, second in items.values():
        assert author >= 1 and first > 0 and second > 0
        first_of_second[second].add(first)
    assert len(first_of_second) == synthetic.N_SUBTOPICS
    assert all(len(firsts) == 1 for firsts in first_of_second.values())
    assert len({next(iter(f)) for f in first_of_second.values()}) == synthetic.N_FIRST
    # Every item in the logs is described; all users have a features row, in KuaiSAR's ranges.
    assert {i for _, (_, i, _) in good[kuaisar.REC_INTER]} <= set(items)
    assert {row[3] for _, row in good[kuaisar.SRC_INTER]} <= set(items)
    features = dict(good[kuaisar.USER_FEATURES])
    assert set(features) == set(range(1, 501)) >= rec_users | src_users
    assert {f[2] for f in features.values()} <= {0, 1, 2}  # onehot_feat1
    assert {f[3] for f in features.values()} <= set(range(8))  # onehot_feat2

    # Sessions: one user, timestamp and keyword per globally unique session id.
    per_session = {}
    for user, (ts, session, words, _, _) in good[kuaisar.SRC_INTER]:
        assert per_session.setdefault(session, (user, ts, words)) == (user, ts, words)
    assert len(per_session) == manifest["search_sessions"]
    _, src_lines = data_lines(out, kuaisar.SRC_INTER)
    item_types = collections.Counter(line.rsplit(b",", 1)[1] for line in src_lines)
    assert item_types[b"VIDEO"] > 0.9 * sum(item_types.values())


def test_some_users_have_only_one_log_and_rows_are_not_time_sorted(planted):
    _, manifest, good = planted
    rec_users = {u for u, _ in good[kuaisar.REC_INTER]}
    src_users = {u for u, _ in good[kuaisar.SRC_INTER]}
    assert len(rec_users - src_users) == manifest["users"]["rec_only"] >= 10  # ~5% of 500
    assert len(src_users - rec_users) == manifest["users"]["search_only"] >= 5  # ~2% of 500
    assert len(rec_users & src_users) == manifest["users"]["both"]
    # Consumers must sort: within a user the feed rows are shuffled.
    by_user = collections.defaultdict(list)
    for user, (ts, _, _) in good[kuaisar.REC_INTER]:
        by_user[user].append(ts)
    unsorted = sum(times != sorted(times) for times in by_user.values())
    assert unsorted > 0.9 * len(by_user)


# --- planted structure ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(planted):
    """Topics and sessions as a consumer would reconstruct them from the files."""
    out, _, good = planted
    item_topic = {item: (first, second) for item, (_, first, second) in good[kuaisar.ITEM_FEATURES]}
    _, lines = data_lines(out, kuaisar.ITEM_FEATURES)
    word_topic: dict[int, set] = collections.defaultdict(set)
    second_col = kuaisar.ITEM_FEATURES_COLUMNS.index("second_level_category_id")
    for fields in csv.reader(line.decode() for line in lines):
        for word in kuaisar.parse_id_list(fields[1], "caption"):
            word_topic[word].add(int(fields[second_col]))
    sessions: dict[int, dict] = {}
    for user, (ts, session, words, item, click) in good[kuaisar.SRC_INTER]:
        s = sessions.setdefault(session, {"user": user, "ts": ts, "words": words, "rows": []})
        s["rows"].append((item, click))
    return item_topic, word_topic, sessions


def test_subtopics_own_disjoint_words_and_queries_recur(world):
    _, word_topic, sessions = world
    assert all(len(subs) == 1 for subs in word_topic.values())
    assert len(word_topic) == synthetic.N_SUBTOPICS * synthetic.WORDS_PER_SUBTOPIC
    for s in sessions.values():
        assert len({next(iter(word_topic[w])) for w in s["words"]}) == 1, s["words"]
        assert synthetic.SHOWN_MIN <= len(s["rows"]) <= synthetic.SHOWN_MAX
    users_per_query = collections.defaultdict(set)
    for s in sessions.values():
        users_per_query[kuaisar.query_key(s["words"])].add(s["user"])
    assert max(len(u) for u in users_per_query.values()) >= 5  # popular queries are shared


def test_search_sessions_show_and_click_on_topic_items_and_40pc_have_no_click(world):
    item_topic, word_topic, sessions = world
    shown = on_topic = clicked = clicked_on_topic = no_click = 0
    for s in sessions.values():
        query_sub = next(iter(word_topic[s["words"][0]]))
        clicks = sum(c for _, c in s["rows"])
        no_click += clicks == 0
        assert clicks <= 2
        for item, click in s["rows"]:
            hit = item_topic[item][1] == query_sub
            shown, on_topic = shown + 1, on_topic + hit
            clicked, clicked_on_topic = clicked + click, clicked_on_topic + (hit and click)
    assert 0.7 < on_topic / shown < 0.9
    assert clicked_on_topic / clicked > on_topic / shown + 0.05  # clicks prefer on-topic items
    assert 0.3 < no_click / len(sessions) < 0.5


def test_feed_ctr_is_higher_after_searching_the_items_subtopic(planted, world):
    _, manifest, good = planted
    item_topic, word_topic, sessions = world
    searched = collections.defaultdict(list)  # user -> [(ts, sub-topic)]
    for s in sessions.values():
        searched[s["user"]].append((s["ts"], next(iter(word_topic[s["words"][0]]))))
    counts = {True: [0, 0], False: [0, 0]}  # recent? -> [impressions, clicks]
    for user, (ts, item, click) in good[kuaisar.REC_INTER]:
        sub = item_topic[item][1]
        recent = any(sub == s and 0 < ts - t <= DAY_MS for t, s in searched[user])
        counts[recent][0] += 1
        counts[recent][1] += click
    ctr = {k: clicks / n for k, (n, clicks) in counts.items()}
    total = counts[True][0] + counts[False][0]
    assert ctr[True] - ctr[False] > 0.1, ctr
    assert counts[True][0] > 0.1 * total  # the effect has enough impressions to be learnt
    assert 0.4 < (counts[True][1] + counts[False][1]) / total < 0.6  # KuaiSAR is ~1:1
    assert manifest["realised"]["feed_ctr_recent_search"] == pytest.approx(ctr[True], abs=1e-4)


def test_search_interests_are_shifted_from_feed_interests(planted, world):
    """Per user, clicked first-level categories in search vs feed differ more than two halves of
    the feed do (the paper's interest shift, sec 5.2)."""
    _, _, good = planted
    item_topic, _, sessions = world
    feed = collections.defaultdict(list)
    for user, (ts, item, click) in sorted(good[kuaisar.REC_INTER], key=lambda r: (r[0], r[1][0])):
        if click:
            feed[user].append(item_topic[item][0])
    search = collections.defaultdict(collections.Counter)
    for s in sessions.values():
        for item, click in s["rows"]:
            if click:
                search[s["user"]][item_topic[item][0]] += 1
    shifted, control = [], []
    for user in set(feed) & set(search):
        if len(feed[user]) < 10 or sum(search[user].values()) < 4:
            continue
        half_a = collections.Counter(feed[user][0::2])
        half_b = collections.Counter(feed[user][1::2])
        shifted.append(js_divergence(half_a, search[user]))
        control.append(js_divergence(half_a, half_b))
    assert len(shifted) > 200
    mean_shift, mean_control = sum(shifted) / len(shifted), sum(control) / len(control)
    assert mean_shift > 0.3 and mean_shift > mean_control + 0.15, (mean_shift, mean_control)


# --- CLI -----------------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.synthetic", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_writes_the_files_and_manifest(tmp_path):
    result = run_cli("--output", str(tmp_path), "--users", "40", "--items", "100", "--seed", "3",
                     "--bad-rows", "5", "--rec-per-user", "10", "--sessions-per-user", "3")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / synthetic.MANIFEST).read_text())
    assert manifest["arguments"]["users"] == 40 and len(manifest["bad_lines"]) == 5
    assert manifest == synthetic.generate(str(tmp_path / "same"), users=40, items=100, seed=3,
                                          bad_rows=5, rec_per_user=10, sessions_per_user=3)
    for name in kuaisar.LOG_FILES:
        file = f"{name}.csv"
        assert (tmp_path / file).read_bytes() == (tmp_path / "same" / file).read_bytes()


@pytest.mark.parametrize("args, message", [
    (["--users", "0"], "--users must be >= 1"),
    (["--items", "10"], "--items must be >= 32"),
    (["--bad-rows", "-1"], "--bad-rows must be >= 0"),
    (["--rec-per-user", "0"], "--rec-per-user must be >= 1"),
    (["--queries-per-subtopic", "0"], "--queries-per-subtopic must be >= 1"),
    (["--users", "many"], "invalid int value"),
])
def test_cli_rejects_bad_arguments_without_traceback(tmp_path, args, message):
    result = run_cli("--output", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(synthetic.ArgumentError, match="sessions-per-user"):
        synthetic.generate(str(tmp_path), users=5, items=100, seed=0, sessions_per_user=0)


def test_larger_query_pools_give_a_longer_tail_of_queries(tmp_path):
    def distinct_queries(pool):
        synthetic.generate(str(tmp_path / str(pool)), users=300, items=200, seed=1,
                           rec_per_user=2, sessions_per_user=8, queries_per_subtopic=pool)
        with open(tmp_path / str(pool) / f"{kuaisar.SRC_INTER}.csv") as f:
            return len({row["keyword"] for row in csv.DictReader(f)})
    assert distinct_queries(2) <= synthetic.N_SUBTOPICS * 2
    assert distinct_queries(300) > 4 * synthetic.N_SUBTOPICS * 2


def test_switching_format_replaces_the_other_copy(tmp_path):
    """The Beam job refuses a directory with both x.csv and x.csv.gz, so none may be left."""
    small = dict(users=10, items=40, seed=1, rec_per_user=5, sessions_per_user=2)
    synthetic.generate(str(tmp_path), **small)
    synthetic.generate(str(tmp_path), gzip=True, **small)
    assert sorted(p.name for p in tmp_path.glob("*.csv*")) == sorted(
        f"{name}.csv.gz" for name in kuaisar.LOG_FILES)
