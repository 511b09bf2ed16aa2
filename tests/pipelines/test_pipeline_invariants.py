"""The Beam job on a generated log with malformed lines, checked by brute force against the CSV:
point-in-time histories, leave-one-out splits, NIP targets, exact row accounting."""

import collections
import json

import pytest

from pipelines import build_tfrecords, kuaisar, synthetic
from qrec_tf import data
from qrec_tf import schema as S

BAD_ROWS = 12


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    manifest = synthetic.generate(str(root / "log"), users=60, items=400, seed=5,
                                  bad_rows=BAD_ROWS, rec_per_user=30, sessions_per_user=6)
    stats = build_tfrecords.run(["--input", str(root / "log"), "--output", str(root / "out"),
                                 "--max-rejected-fraction", "1.0", "--seed", "3"])
    logs = {}
    for name in kuaisar.LOG_FILES:
        lines = (root / "log" / f"{name}.csv").read_bytes().split(b"\n")
        parse = kuaisar.LineParser(kuaisar.parse_header(name, lines[0]))
        rows = collections.defaultdict(list)
        for line in lines[1:]:
            if line:
                try:
                    key, row = parse(line)
                except kuaisar.MalformedRow:
                    continue
                rows[key].append(row)
        logs[name] = rows
    examples = []
    for split in S.SPLITS:
        for batch in data.make_dataset(str(root / "out"), split, batch_size=256, shuffle=False):
            cols = {k: v.numpy().tolist() for k, v in batch.items()}
            examples += [(split, {k: cols[k][i] for k in cols}) for i in range(len(cols[S.LABEL]))]
    return root, manifest, stats, logs, examples


def test_counts_balance_against_the_generator_manifest(generated):
    root, manifest, stats, _, _ = generated
    letters = [json.loads(line) for path in (root / "out" / S.DEAD_LETTER_DIR).glob("*.jsonl")
               for line in path.read_text().splitlines()]
    assert len(letters) == BAD_ROWS
    for name in kuaisar.LOG_FILES:
        entry = stats[name]
        assert entry["rows_read"] == manifest["rows"][name]
        assert entry["rows_rejected"] == manifest["bad_rows"][name]
        # The generator may show an item twice in a session: exact duplicates, dropped.
        assert entry["rows_read"] == (entry["rows_used"] + entry["rows_rejected"]
                                      + sum(entry.get("rows_dropped", {}).values()))
        assert entry.get("rows_dropped", {}) == ({"duplicate": entry["duplicate_rows"]}
                                                 if entry.get("duplicate_rows") else {})
        assert sum(1 for d in letters if d["file"] == name) == manifest["bad_rows"][name]


def test_every_kept_feed_row_is_exactly_one_example(generated):
    _, _, stats, logs, examples = generated
    kept = {u for u in logs[kuaisar.REC_INTER] if u in logs[kuaisar.SRC_INTER]}
    assert stats["users"]["kept"] == len(kept)
    want = collections.Counter((u, ts, item) for u in kept
                               for ts, item, _ in logs[kuaisar.REC_INTER][u])
    got = collections.Counter((e[S.USER_ID], e[S.TIMESTAMP], e[S.ITEM_ID]) for _, e in examples)
    assert got == want
    dropped = stats["users"]["dropped"]
    feed_users, search_users = set(logs[kuaisar.REC_INTER]), set(logs[kuaisar.SRC_INTER])
    assert dropped["no_search_history"] == len(feed_users - search_users)
    assert dropped["no_rec_history"] == len(search_users - feed_users)


def test_histories_are_strictly_before_t_and_splits_leave_one_out(generated):
    _, _, _, logs, examples = generated
    schema = S.Schema()
    for split, e in examples:
        user, t = e[S.USER_ID], e[S.TIMESTAMP]
        rec = sorted(logs[kuaisar.REC_INTER][user])
        clicked_before = [item for ts, item, click in rec if click and ts < t]
        hist = [i for i in e[S.HIST_ITEM_IDS] if i != S.PAD_ID]
        assert hist == clicked_before[-schema.history_length:]
        sessions = {}
        for ts, sid, words, _, _ in logs[kuaisar.SRC_INTER][user]:
            sessions.setdefault(sid, (ts, sid, words))
        before = [kuaisar.query_key(w) for ts, sid, w in sorted(sessions.values()) if ts < t]
        assert [q.decode() for q in e[S.QUERY_KEYS] if q] == before[-schema.max_queries:]
        position = rec.index((t, e[S.ITEM_ID], e[S.LABEL]))
        assert split == {len(rec) - 1: "test", len(rec) - 2: "valid"}.get(position, "train")


def test_nip_targets_come_from_later_train_rows_and_never_held_out_items(generated):
    _, _, _, logs, examples = generated
    checked = 0
    for split, e in examples:
        pos = [i for i in e[S.NIP_POS_ITEM_IDS] if i != S.PAD_ID]
        neg = [i for i in e[S.NIP_NEG_ITEM_IDS] if i != S.PAD_ID]
        if split != "train":
            assert pos == [] and neg == []
            continue
        rec = sorted(logs[kuaisar.REC_INTER][e[S.USER_ID]])
        train, held_out = rec[:-2], {item for _, item, _ in rec[-2:]}
        later = [(item, click) for ts, item, click in train
                 if ts > e[S.TIMESTAMP] and item not in held_out]
        assert set(pos) <= {item for item, click in later if click}
        assert set(neg) <= {item for item, click in later if not click}
        assert len(pos) == min(5, sum(click for _, click in later))
        assert len(neg) == min(5, sum(1 - click for _, click in later))
        checked += bool(pos or neg)
    assert checked > 100
