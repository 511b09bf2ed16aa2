"""benchmarks.query_diagnostics on a hand-written log: which impressions follow a search."""

import numpy as np
import pytest

from benchmarks import query_diagnostics

H = 3_600_000


def write(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")


def test_search_signal_counts_impressions_within_the_window_after_a_search_of_their_subcategory(
        tmp_path):
    write(tmp_path / "item_features.csv", ["item_id", "second_level_category_id"],
          [[1, 10], [2, 20], [3, 10]])
    # Query [5]'s results are in sub-category 10 (2 of 3), query [6]'s in 20.
    write(tmp_path / "src_inter.csv",
          ["user_id", "search_session_timestamp", "keyword", "item_id"],
          [[1, 0, '"[5]"', 1], [1, 0, '"[5]"', 3], [1, 0, '"[5]"', 2], [2, 0, '"[6]"', 2]])
    write(tmp_path / "rec_inter.csv", ["user_id", "item_id", "timestamp", "click"],
          [[1, 3, 1 * H, 1],     # sub 10, 1 h after user 1 searched it: after a search
           [1, 1, 49 * H, 0],    # sub 10, but 49 h after: outside the 48 h window
           [1, 2, 2 * H, 0],     # sub 20: user 1 never searched it
           [2, 2, -1 * H, 1],    # before user 2's search
           [2, 2, 3 * H, 1]])    # after it
    result = query_diagnostics.search_signal(str(tmp_path), window_hours=48)
    assert result["impressions"] == 5
    assert result["ctr"] == pytest.approx(0.6)
    assert result["after_search"] == {"rows": 2, "share": 0.4, "ctr": 1.0}
    assert result["other_ctr"] == pytest.approx(0.3333, abs=1e-4)


def test_a_missing_log_file_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="item_features.csv not found"):
        query_diagnostics.search_signal(str(tmp_path))


def test_after_search_reads_the_history_of_the_users_searches(tmp_path):
    write(tmp_path / "item_features.csv", ["item_id", "second_level_category_id"],
          [[1, 10], [2, 20]])
    write(tmp_path / "src_inter.csv", ["user_id", "search_session_timestamp", "keyword", "item_id"],
          [[1, 0, '"[5]"', 1]])
    history = query_diagnostics.search_history(str(tmp_path))
    assert query_diagnostics.after_search(history, "1", "1", 48 * H)
    assert not query_diagnostics.after_search(history, "1", "1", 48 * H + 1)
    assert not query_diagnostics.after_search(history, "1", "1", 0)          # not strictly after
    assert not query_diagnostics.after_search(history, "1", "2", H)          # other sub-category
    assert not query_diagnostics.after_search(history, "2", "1", H)          # other user


def test_fit_logistic_on_one_binary_feature_gives_the_two_groups_log_odds():
    """With one 0/1 column the maximum-likelihood fit is closed-form: the intercept is the
    log-odds of the 0 group (CTR 1/4) and the weight the log-odds ratio (CTR 3/4 vs 1/4)."""
    x = np.array([[0]] * 4 + [[1]] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    weight, intercept = query_diagnostics.fit_logistic(x, y)
    assert intercept == pytest.approx(np.log(1 / 3), abs=1e-4)
    assert weight == pytest.approx(np.log(3) - np.log(1 / 3), abs=1e-4)
