"""stats.json of pipelines.build_tfrecords: its derived rates, the checks that fail a build, and
the summary the job logs: plain Python on the stats dict, run after the pipeline (nest_stats
also inside it, by WriteJson)."""

from __future__ import annotations

from typing import Iterable

from pipelines import kuaisar
from pipelines.log_reading import nest_keys
from qrec_tf import schema as S


def nest_stats(flat: dict[str, int]) -> dict:
    """nest_keys(flat) plus derived rates."""
    nested = nest_keys(flat)
    examples = nested.setdefault("examples", {})
    for split in (*S.SPLITS, *([S.SEARCH_TRAIN] if S.SEARCH_TRAIN in examples else [])):
        entry = examples.setdefault(split, {})
        if not isinstance(entry, dict):
            continue
        n = entry.get("count", 0)
        entry["ctr"] = entry.get("clicks", 0) / n if n else None
    qi = nested.get("query_items", {})
    if qi.get("queries"):
        qi["share_with_click"] = qi.get("queries_with_click", 0) / qi["queries"]
    return nested


def check_input_errors(stats: dict, inputs: dict[str, tuple[str, kuaisar.Header]]) -> list[str]:
    """A compressed input that is cut or corrupt: this run did not read all of it."""
    problems = []
    for name, (path, _) in inputs.items():
        for reason in stats.get(name, {}).get("input_errors", {}):
            what = ("is cut short (the gzip stream ends early)" if reason == "gzip_truncated"
                    else "is corrupt (not a valid gzip stream)")
            problems.append(f"{name}: {path} {what}; {stats[name].get('rows_read', 0):,} rows "
                            "were read before the error")
    return problems


def check_examples(stats: dict) -> list[str]:
    """A build without training examples is no training data."""
    if stats.get("examples", {}).get(S.SPLITS[0], {}).get("count", 0):
        return []
    users = stats.get("users", {})
    return [f"no training examples: {users.get('kept', 0):,} users kept (a user needs search "
            f"and feed history, and 3 feed interactions for a train one); dropped "
            f"{users.get('dropped', {})}"]


def count_records(pattern: str) -> int:
    """Records in the gzip TFRecord files matching `pattern` (any Beam filesystem)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.io.tfrecordio import _TFRecordUtil

    count = 0
    for match in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(match.path) as f:
            while _TFRecordUtil.read_record(f) is not None:
                count += 1
    return count


def check_written(stats: dict, output: str, splits: Iterable[str]) -> list[str]:
    """Each split's example files under `output` hold as many records as the job built (its
    stats); a runner that dropped some fails the build instead of publishing a partial split."""
    from apache_beam.io.filesystems import FileSystems

    problems = []
    for split in splits:
        built = stats.get("examples", {}).get(split, {}).get("count", 0)
        written = count_records(FileSystems.join(output, split, "*"))
        if written != built:
            problems.append(f"{split}: {written:,} examples written of {built:,} built (the "
                            "runner lost some; rerun with --direct_running_mode=in_memory)")
    return problems


def check_rejections(stats: dict, max_fraction: float) -> list[str]:
    problems = []
    for name in kuaisar.LOG_FILES:
        entry = stats.get(name, {})
        read, rejected = entry.get("rows_read", 0), entry.get("rows_rejected", 0)
        if read and rejected / read > max_fraction:
            problems.append(f"{name}: {rejected:,} of {read:,} rows rejected "
                            f"({rejected / read:.2%} > {max_fraction:.2%}); reasons: "
                            f"{entry.get('rejected_by_reason', {})}")
    return problems


def check_item_features(stats: dict, max_conflicting: float, max_missing: float) -> list[str]:
    """Items whose item_features rows differ (one is used: row_checks.CHOSEN_ITEM_ROW), and feed
    rows whose item has no features row, each above its limit."""
    entry = stats.get(kuaisar.ITEM_FEATURES, {})
    problems = []
    items, conflicting = entry.get("items", 0), entry.get("conflicting_items", 0)
    if items and conflicting / items > max_conflicting:
        problems.append(f"{kuaisar.ITEM_FEATURES}: {conflicting:,} of {items:,} items have rows "
                        f"that differ ({conflicting / items:.2%} > {max_conflicting:.2%}, "
                        "--max-conflicting-fraction)")
    rows, missing = (entry.get("feed_rows_of_kept_users", 0),
                     entry.get("feed_rows_without_features", 0))
    if rows and missing / rows > max_missing:
        problems.append(f"{kuaisar.ITEM_FEATURES}: {missing:,} of {rows:,} feed rows of kept users "
                        f"({missing / rows:.2%} > {max_missing:.2%}, --max-missing-item-features)"
                        f" have an item without a features row "
                        f"({entry.get('feed_items_without_features', 0):,} distinct items)")
    return problems


def build_warnings(stats: dict) -> list[str]:
    """What a build that passes its checks may still get wrong: logged as warnings."""
    warnings = []
    entry = stats.get(kuaisar.ITEM_FEATURES, {})
    if entry.get("feed_rows_without_features"):
        warnings.append(f"{entry['feed_rows_without_features']:,} of "
                        f"{entry.get('feed_rows_of_kept_users', 0):,} feed rows of kept users "
                        f"({entry.get('feed_items_without_features', 0):,} distinct items) have "
                        "no item_features row: their author and categories are missing")
    if entry.get("conflicting_items"):
        warnings.append(f"{entry['conflicting_items']:,} items have item_features rows that "
                        "differ; one is used (README, \"What a bad input gets\")")
    for name in (kuaisar.REC_INTER, kuaisar.SRC_INTER):
        if stats.get(name, {}).get("duplicate_rows"):
            warnings.append(f"{name}: {stats[name]['duplicate_rows']:,} exact duplicate rows")
    if stats.get(kuaisar.SRC_INTER, {}).get("rows_used", 0) > 0:
        for split in S.SPLITS:
            e = stats.get("examples", {}).get(split, {})
            if e.get("count") and not e.get("with_queries"):
                warnings.append(f"{split}: none of {e['count']:,} examples has a query before "
                                "it although the search log is not empty (timestamps of the two "
                                "logs in different units or periods?)")
    return warnings


def summary(stats: dict) -> str:
    lines = []
    for name in kuaisar.LOG_FILES:
        e = stats.get(name, {})
        lines.append(f"  {name:14s} read {e.get('rows_read', 0):>11,}"
                     f"  used {e.get('rows_used', 0):>11,}"
                     f"  rejected {e.get('rows_rejected', 0):>7,}")
    users = stats.get("users", {})
    lines.append(f"  users kept {users.get('kept', 0):,}; dropped {users.get('dropped', {})}")
    for split in (*S.SPLITS, *([S.SEARCH_TRAIN] if S.SEARCH_TRAIN in stats.get("examples", {})
                               else [])):
        e = stats.get("examples", {}).get(split, {})
        ctr = e.get("ctr")
        lines.append(f"  {split:5s} examples {e.get('count', 0):>10,}  ctr "
                     + (f"{ctr:.4f}" if ctr is not None else "n/a"))
    qi = stats.get("query_items", {})
    lines.append(f"  queries {qi.get('queries', 0):,}, share with a click "
                 f"{qi.get('share_with_click', 0):.3f}")
    return "\n".join(lines)
