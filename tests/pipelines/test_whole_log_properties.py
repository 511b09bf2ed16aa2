"""Property-based test of the whole Beam job on small logs (issue 31): any permutation,
duplication or deletion of the hand log's rows either builds with balanced counts (read = used +
rejected + dropped, duplicates counted exactly) and no user's valid row equal to its test row,
or fails with a message."""

import pathlib
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.beam_support import InputError
from qrec_tf import schema as S
from tests.pipelines import hand_log
from tests.pipelines.test_bad_data import held_out_pairs
from tests.pipelines.test_build_tfrecords import run_job

# Extra feed rows that make the property harder: the same impression with the other click, and
# a third feed row for user 2 at its test time.
EXTRA_REC = [hand_log.rec(1, 16, 6000, 0), hand_log.rec(2, 23, 3000, 1)]


@st.composite
def edited(draw, rows):
    """`rows` deleted, repeated (up to 3 copies) and shuffled."""
    copies = draw(st.lists(st.integers(0, 3), min_size=len(rows), max_size=len(rows)))
    lines = [row for row, n in zip(rows, copies) for _ in range(n)]
    return draw(st.permutations(lines))


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rec=edited(hand_log.REC_ROWS + EXTRA_REC), src=edited(hand_log.SRC_ROWS),
       items=edited(hand_log.ITEM_ROWS), keep=st.booleans())
def test_any_edit_of_the_rows_builds_balanced_or_fails_with_a_message(rec, src, items, keep):
    lines = {"rec_inter": rec, "src_inter": src, "item_features": items,
             "user_features": hand_log.USER_ROWS}
    with tempfile.TemporaryDirectory() as root:
        root = pathlib.Path(root)
        files = {name: [hand_log.FILES[name][0], *rows] for name, rows in lines.items()}
        inp = hand_log.write(root / "in", files=files)
        flags = ["--max-missing-item-features", "1", "--max-conflicting-fraction", "1",
                 *(["--keep-duplicate-rows"] if keep else [])]
        try:
            stats = run_job(inp, root / "out", *flags)
        except (SystemExit, InputError) as failure:
            assert str(failure).strip(), "a failure needs a message"
            return
        for name, rows in lines.items():
            entry = stats[name]
            dropped = sum(entry.get("rows_dropped", {}).values())
            assert entry["rows_read"] == len(rows), name
            assert entry["rows_read"] == entry["rows_used"] + entry["rows_rejected"] + dropped
            assert entry.get("duplicate_rows", 0) == len(rows) - len(set(rows)), name
        for user, pair in held_out_pairs(root / "out").items():
            # one example per held-out split; a user with one distinct interaction has a test one
            assert len(pair) == len(set(pair)) <= 2, (user, pair)
        assert stats["examples"][S.SPLITS[0]]["count"] > 0
