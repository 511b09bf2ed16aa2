"""The rows of pipelines.synthetic's four files (as columns of cells, in KuaiSAR's formats) and
the malformed lines that --bad-rows adds."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from pipelines import kuaisar
from pipelines.synthetic.regimes import WORDS_PER_SUBTOPIC
from pipelines.synthetic.world import World

BAD_KINDS = ("truncated", "non_numeric_id", "bad_keyword", "nul_byte", "empty_required")
BAD_KEYWORDS = ("[3, x]", "3, 4", "[]")
# The required cell blanked by "empty_required": one the parser does not treat as optional.
EMPTY_REQUIRED_COLUMN = {kuaisar.REC_INTER: "timestamp", kuaisar.SRC_INTER: "item_id",
                         kuaisar.USER_FEATURES: "user_id", kuaisar.ITEM_FEATURES: "item_id"}

# One file's data as columns of cells (str, or int/float that the csv writer formats).
Columns = list[list[Any]]
_BEIJING_OFFSET_MS = 8 * 3600 * 1000


# --- cells in KuaiSAR's formats ----------------------------------------------------------------
def _cells(values: np.ndarray) -> list[Any]:
    """Column -> list of cells. Python ints/floats, not str: the csv writer formats them in C (as
    str() would: 1684742000000.0, 60792.0), which halves the time of a 1M-row file."""
    return values.tolist()


def _id_lists(lists: Iterable[Sequence[int]]) -> list[str]:
    """KuaiSAR's list-cell format, "[20, 34, 3]" (the csv writer quotes it)."""
    return ["[" + ", ".join(map(str, ids)) + "]" for ids in lists]


def _beijing_times(timestamps_ms: np.ndarray) -> list[str]:
    """Vectorised kuaisar.beijing_time: per-row datetime calls would dominate at 1M rows."""
    local = (timestamps_ms + _BEIJING_OFFSET_MS).astype("datetime64[ms]")
    text = np.datetime_as_string(local, unit="s").astype("S19")  # 2023-05-22T15:53:20
    raw = text.view(np.uint8).reshape(-1, 19)
    raw[:, 10] = ord(" ")
    return text.astype("U19").tolist()


# --- rows ---------------------------------------------------------------------------------------
def rec_columns(world: World, rng: np.random.Generator, rec: dict[str, np.ndarray],
                user_ids: np.ndarray) -> Columns:
    """rec_inter's columns; engagement columns are plausible noise (only `click` is planted)."""
    n = len(rec["user"])
    # A real log is not sorted: group by user, shuffle within the user (deterministically).
    order = np.lexsort((rng.random(n), rec["user"]))
    user, ts, item, click = (rec[k][order] for k in ("user", "ts", "item", "click"))
    duration = world.item_duration[item]
    watched = np.where(click == 1, rng.uniform(0.3, 1.5, n), rng.uniform(0.02, 0.3, n))
    playing = np.round(duration * watched)

    def flag(p: float, only_clicked: bool = False) -> list[int]:
        """A 0/1 engagement column (forward/like/follow only happen on clicked rows)."""
        on = rng.random(n) < p
        return _cells((on & (click == 1) if only_clicked else on).astype(np.int64))

    return [
        _cells(user_ids[user]), _cells(world.item_ids[item]), _cells(playing), _cells(duration),
        # KuaiSAR writes the ms timestamp as a float ("1684742000000.0").
        _beijing_times(ts), _cells(ts.astype(np.float64)), _cells(click),
        flag(0.03, True), flag(0.15, True), flag(0.02, True), flag(0.03), flag(0.02),
    ]


def src_columns(world: World, rng: np.random.Generator, search: dict[str, np.ndarray],
                user_ids: np.ndarray) -> Columns:
    """src_inter's columns: one row per shown item, a session's rows contiguous."""
    n_sess = len(search["sess_user"])
    session_ids = rng.permutation(n_sess) + 1  # globally unique, unrelated to time order
    # Sessions stay contiguous (rows of a session share id, time, keyword) but their order
    # within a user is shuffled.
    sess_order = np.lexsort((rng.random(n_sess), search["sess_user"]))
    position = np.empty(n_sess, dtype=np.int64)
    position[sess_order] = np.arange(n_sess)
    rows = np.argsort(position[search["row_sess"]], kind="stable")
    sess = search["row_sess"][rows]
    n = len(rows)
    sess_ts = search["sess_time"][sess]
    session_time = np.array(_beijing_times(search["sess_time"]), dtype=object)
    keyword = np.array(_id_lists(world.queries), dtype=object)[search["sess_query"][sess]]
    source = np.where(search["sess_source"][sess], "USER_INPUT", "RECOMMEND_QUERY")
    item_type = np.where(rng.random(n) < 0.95, "VIDEO", "LIVE")
    return [
        _cells(user_ids[search["sess_user"][sess]]), _cells(session_ids[sess]),
        session_time[sess].tolist(), _cells(sess_ts), keyword.tolist(), source.tolist(),
        _cells(world.item_ids[search["row_item"][rows]]), _cells(search["row_click"][rows]),
        item_type.tolist(),
    ]


def user_columns(rng: np.random.Generator, user_ids: np.ndarray, sessions: np.ndarray,
                 recs: np.ndarray, sessions_mean: int, rec_mean: int) -> Columns:
    """user_features' columns: every user, including those missing from one of the logs."""
    def level(count: np.ndarray, mean: int) -> np.ndarray:
        # 0 = inactive; 1-3 by activity relative to the mean (KuaiSAR's levels are small ints).
        return np.where(count == 0, 0, 1 + (count > mean) + (count > 1.5 * mean))

    n = len(user_ids)
    return [_cells(user_ids), _cells(level(sessions, sessions_mean)), _cells(level(recs, rec_mean)),
            _cells(rng.integers(0, 3, n)), _cells(rng.integers(0, 8, n))]


def item_columns(world: World, rng: np.random.Generator) -> Columns:
    """item_features' columns: topics, captions from the sub-topic's words, filler categories."""
    n = len(world.item_ids)
    order = np.argsort(world.item_ids)  # item_features sorted by id, unlike the topic layout
    sub = world.item_sub[order]
    first = world.item_first[order]
    caption_len = rng.integers(3, 11, n)
    caption_words = world.words[sub[:, None], rng.integers(0, WORDS_PER_SUBTOPIC, (n, 10))]
    captions = _id_lists(w[:k] for w, k in zip(caption_words.tolist(), caption_len.tolist()))
    upload = np.datetime64("2023-01-01") + rng.integers(0, 140, n).astype("timedelta64[D]")
    first_id, second_id = world.first_ids[first], world.second_ids[sub]
    third_id = 1000 + sub * 3 + rng.integers(0, 3, n)
    first_name = [f"cat{i}" for i in _cells(first_id)]
    second_name = [f"sub{i}" for i in _cells(second_id)]
    third_name = [f"t{i}" for i in _cells(third_id)]
    authors = 1 + rng.integers(0, max(1, n // 4), n)
    if world.item_creator is not None:   # the "creator" effect: a creator's videos share its id
        authors = world.creator_ids[world.item_creator[order]]
    return [
        _cells(world.item_ids[order]), captions,
        _cells(authors),
        ["NORMAL"] * n, np.datetime_as_string(upload).tolist(),
        np.where(rng.random(n) < 0.7, "ShortImport", "LongImport").tolist(),
        _cells(first_id), first_name, first_name,
        _cells(second_id), second_name, second_name,
        _cells(third_id), third_name, third_name,
        ["0"] * n, ["UNKNOWN"] * n, ["UNKNOWN"] * n,
    ]


# --- malformed lines -----------------------------------------------------------------------------
def _corrupt(file: str, row: list[str], kind: str, serial: int) -> list[str]:
    """A malformed copy of a good row; kuaisar.LineParser must reject every kind."""
    row = [str(cell) for cell in row]
    names = kuaisar.COLUMNS[file]
    if kind == "truncated":
        return row[: max(1, len(row) // 2)]
    if kind == "non_numeric_id":
        row[0] = f"u{row[0]}x" if names[0] == "user_id" else f"i{row[0]}x"
    elif kind == "bad_keyword":
        row[names.index("keyword")] = BAD_KEYWORDS[serial % len(BAD_KEYWORDS)]
    elif kind == "nul_byte":
        middle = len(row) // 2
        row[middle] = row[middle][:1] + "\x00" + row[middle][1:]
    elif kind == "empty_required":
        row[names.index(EMPTY_REQUIRED_COLUMN[file])] = ""
    return row


def plan_bad_rows(rng: np.random.Generator, bad_rows: int, columns: dict[str, Columns]
                  ) -> dict[str, list[tuple[int, list[str], str]]]:
    """Per file: (data-line index in the final file, corrupted row, kind), sorted by index.

    Bad lines are *added* copies, so the good lines are the same with or without --bad-rows.
    Kinds cycle; files cycle too, except that a bad keyword can only live in src_inter.
    """
    chosen: dict[str, list[tuple[list[str], str]]] = {f: [] for f in kuaisar.LOG_FILES}
    for j in range(bad_rows):
        kind = BAD_KINDS[j % len(BAD_KINDS)]
        file = (kuaisar.SRC_INTER if kind == "bad_keyword"
                else kuaisar.LOG_FILES[j % len(kuaisar.LOG_FILES)])
        cols = columns[file]
        source = int(rng.integers(0, len(cols[0])))
        chosen[file].append((_corrupt(file, [c[source] for c in cols], kind, j), kind))
    plan: dict[str, list[tuple[int, list[str], str]]] = {}
    for file, rows in chosen.items():
        total = len(columns[file][0]) + len(rows)
        positions = np.sort(rng.choice(total, len(rows), replace=False)).tolist()
        plan[file] = [(pos, row, kind) for pos, (row, kind) in zip(positions, rows)]
    return plan
