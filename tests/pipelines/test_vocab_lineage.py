"""The --previous-data vocabulary rule (pipelines.vocab_lineage.merge_rows), by hand."""

import pytest

from pipelines import build_transforms, vocab_lineage
from pipelines.beam_support import InputError
from qrec_tf import schema as S


def test_old_values_keep_their_lines_new_ones_follow_most_frequent_first_counts_decay():
    previous = [("7", 10), ("3", 5), ("9", 1)]
    current = [("3", 4), ("12", 2), ("5", 6), ("1", 1), ("8", 2)]
    rows, appended = vocab_lineage.merge_rows(previous, current, 0.5, 2,
                                              build_transforms._sort_key)
    # 7: round(0.5 * 10) + 0 = 5; 3: round(2.5) + 4 = 7 (half up); 9: round(0.5) + 0 = 1 (kept
    # below --min-count: an old value never loses its index); then 5 (6), 8 and 12 (2, by id);
    # 1 (count 1 < min count 2) is left out
    assert rows == [("7", 5), ("3", 7), ("9", 1), ("5", 6), ("8", 2), ("12", 2)]
    assert appended == 3
    fresh, appended = vocab_lineage.merge_rows([], current, 0.5, 1, build_transforms._sort_key)
    assert [v for v, _ in fresh] == ["5", "3", "8", "12", "1"] and appended == 5


def test_previous_data_with_other_lengths_or_without_a_schema_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="schema.json not found"):
        vocab_lineage.load_previous(str(tmp_path), S.Schema())
    (tmp_path / S.SCHEMA_FILE).write_text(S.Schema(history_length=7).to_json())
    with pytest.raises(InputError, match="other sequence lengths"):
        vocab_lineage.load_previous(str(tmp_path), S.Schema())
    (tmp_path / S.SCHEMA_FILE).write_text(S.Schema().to_json())
    with pytest.raises(InputError, match="users.txt not found"):
        vocab_lineage.load_previous(str(tmp_path), S.Schema())
