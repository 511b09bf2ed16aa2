"""Interest shift and cross-domain correlation of KuaiSAR-format logs (paper sec 5.2), on Beam.

    python -m pipelines.analysis --input DIR --output DIR [--users 10000] [--samples 10000]
        [--seed 0] [--overwrite] [Beam pipeline options]

Input: DIR/{rec_inter,src_inter,item_features}.csv (or .csv.gz), parsed by pipelines.kuaisar
exactly as pipelines.build_tfrecords does (user_features is not needed). Output:

    analysis.json          everything below, with the row and user accounting
    js_histogram.png       histogram of the per-user JS divergence of the sampled users
    js_per_user.csv        user_id, js, search_clicks, feed_clicks of the sampled users
    correlation_samples.csv  the sampled feed clicks: user_id, timestamp, item_id, category,
                           s_size, in_s, p_src, expected (the terms of eqs 22-24)
    dead_letter/           JSON lines {"file", "reason", "line"}, one per rejected line

How this job reads docs/PAPER.md "Data analysis" (every symbol):
- Category: an item's `first_level_category_id` in item_features. An item with no row there, or
  an empty category cell, has an unknown category: its clicks and impressions are left out of the
  distributions below and counted in analysis.json (`clicks`, `search_impressions`).
- A search click is a src_inter row with click_cnt > 0; a feed click a rec_inter row with
  click = 1. "Before t" means a timestamp strictly smaller than t (the foundation's rule).
- Interest shift. For a user u, p_src^u(c) is the share of category c among u's search clicks and
  p_rec^u(c) its share among u's feed clicks (whole log). JS(u) = 1/2 KL(p_src^u || m) +
  1/2 KL(p_rec^u || m) with m = (p_src^u + p_rec^u) / 2 and log base 2, so JS is in [0, 1]
  (0: the same distribution, 1: disjoint categories). Only users with at least one categorised
  click in each domain have a JS; the others are counted by what they lack (`users`). The
  histogram, the share with JS <= 0.5 (the paper calls JS >= 0.5 "shifted"), the mean and the
  quantiles are over `--users` of those users drawn at random (all of them when fewer).
- Correlation, eqs 22-24 on categories. A sample is a positive feed interaction (u, i, t): a feed
  click, with c = the category of item i.
  * s: the categories of the items shown to u in search before t, one per src_inter row (clicked
    or not, every earlier session), so |s| is the number of such impressions with a known
    category. I(i in s) = 1 when c occurs in s.
  * p_src(c): the share of category c among all search clicks of the log (every user, the whole
    period): the platform's search-click category distribution. Not the user's own p_src^u: s
    is drawn from u's own searches, so a null built from them would predict the observed hit rate
    whatever the feed did, and the ratio would be ~1 by construction.
  * 1 - (1 - p_src(c))^|s| is then the probability that c occurs among |s| categories drawn
    independently from p_src: the hit rate expected if u's searches said nothing about u's feed
    clicks. R_corr^1 = mean(I) / mean(expected) (eqs 22-23); R_corr^2 = mean(I / expected)
    (eq 24). R > 1: a feed click's category shows up in the user's earlier searches more often
    than chance (the paper: 1.51 / 1.50 on KuaiSAR-small).
  * Eligible samples have a known c, |s| >= 1 (with |s| = 0 both I and the expected rate are 0:
    eq 24 is undefined there and eq 23 does not change) and p_src(c) > 0 (a category nobody
    clicked in search has an expected rate of 0). The others are counted by reason
    (`feed_positives`); `--samples` eligible samples are drawn at random (all when fewer).
  * Reading R: the null treats every impression as an independent draw from the platform-wide
    distribution. A user whose searches stay within a few categories covers fewer categories
    than that, so with few categories and long search histories (expected rates near 1) R can
    stay below 1 even where search and feed tastes agree: compare R across logs, not only to 1.
- Random draws are deterministic: every user (sample) gets the key blake2b(seed, kind, ids), and
  the `--users` (`--samples`) smallest keys are kept (Beam's Top.Smallest). The same seed and
  input give the same draw on any runner and any sharding, and a larger n keeps a smaller n's draw.

Runs locally like pipelines.build_tfrecords (pipelines.beam_support.LocalRunner, one worker
process per core; --direct_running_mode=in_memory for one process); other Beam options
(--runner=DataflowRunner --project ... / PortableRunner) pass through unchanged.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import sys
import time
from typing import Iterable, Mapping, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindows
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipelines import build_tfrecords, kuaisar
from pipelines.user_examples import RecRow, SearchRow
from qrec_tf import schema as S

LOG = logging.getLogger("pipelines.analysis")
PROG = "python -m pipelines.analysis"
INPUT_FILES = (kuaisar.REC_INTER, kuaisar.SRC_INTER, kuaisar.ITEM_FEATURES)
ANALYSIS_FILE = "analysis.json"
HISTOGRAM_FILE = "js_histogram.png"
JS_FILE = "js_per_user.csv"
SAMPLES_FILE = "correlation_samples.csv"
OUTPUTS = (ANALYSIS_FILE, HISTOGRAM_FILE, JS_FILE, SAMPLES_FILE, S.DEAD_LETTER_DIR)
SHIFT_THRESHOLD = 0.5          # the paper's cut: JS >= 0.5 = shifted interests
QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
HISTOGRAM_BINS = 20
HISTOGRAM_SIZE_INCHES, HISTOGRAM_DPI = (8.0, 5.0), 100  # -> an 800 x 500 PNG
DEFAULT_USERS = DEFAULT_SAMPLES = 10_000  # the paper's n for both analyses
# Every count analysis.json reports, present (0) even when nothing was counted.
# users/total = with_both + without_search_clicks + without_feed_clicks + without_any_clicks;
# feed_positives/total = unknown_category + no_earlier_search_impression +
#     with_earlier_search_impression, and the latter = eligible + category_never_clicked_in_search.
STAT_KEYS = (
    "users/total", "users/with_both", "users/without_search_clicks", "users/without_feed_clicks",
    "users/without_any_clicks", "users/no_search_rows", "users/no_feed_rows",
    "clicks/search", "clicks/search_unknown_category", "clicks/feed",
    "clicks/feed_unknown_category", "search_impressions/total",
    "search_impressions/unknown_category", "feed_positives/total",
    "feed_positives/unknown_category", "feed_positives/no_earlier_search_impression",
    "feed_positives/with_earlier_search_impression",
    "feed_positives/category_never_clicked_in_search", "feed_positives/eligible",
)


# --- the measures (pure functions: the units under test) ------------------------------------
def js_divergence(p: Mapping[int, float], q: Mapping[int, float]) -> float:
    """Jensen-Shannon divergence, base 2, in [0, 1], of two distributions given as non-negative
    weights per category (counts or probabilities; each side is normalised). Both need a positive
    total."""
    keys = sorted(set(p) | set(q))
    a = np.array([p.get(k, 0) for k in keys], dtype=np.float64)
    b = np.array([q.get(k, 0) for k in keys], dtype=np.float64)
    if not (a.sum() > 0 and b.sum() > 0) or (a < 0).any() or (b < 0).any():
        raise ValueError(f"need two non-negative, non-empty distributions, got {p} and {q}")
    a, b = a / a.sum(), b / b.sum()
    m = (a + b) / 2

    def kl_to_m(x: np.ndarray) -> float:
        support = x > 0  # 0 log 0 = 0; m > 0 wherever x > 0
        return float(np.sum(x[support] * np.log2(x[support] / m[support])))

    return min(max((kl_to_m(a) + kl_to_m(b)) / 2, 0.0), 1.0)  # clip float rounding


def expected_hit_rate(p: float, draws: int) -> float:
    """1 - (1 - p)^draws: the chance that a category of probability p occurs in `draws`
    independent draws (expm1/log1p keep it exact for small p)."""
    return -math.expm1(draws * math.log1p(-p)) if p < 1 else float(draws > 0)


def sample_key(seed: int, kind: str, *ids: int) -> int:
    """A 64-bit pseudo-random key of (seed, kind, ids), identical on every machine and run
    (unlike hash(), which Python salts per process for strings)."""
    text = "/".join([str(seed), kind, *map(str, ids)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


class FeedSample(NamedTuple):
    """A positive feed interaction and its terms in eqs 22-24 (p_src applied later)."""

    user_id: int
    timestamp: int
    item_id: int
    category: int
    s_size: int    # |s|: search impressions with a known category before the click
    in_s: int      # I(i in s), on categories


class UserShift(NamedTuple):
    """A user with categorised clicks in both domains, keyed for the random draw."""

    key: int
    user_id: int
    js: float
    search_clicks: int
    feed_clicks: int


@dataclasses.dataclass
class UserAnalysis:
    """One user's contribution: click distributions, correlation samples, counts."""

    search_clicks: collections.Counter  # category -> the user's search clicks on it
    feed_clicks: collections.Counter    # category -> the user's feed clicks on it
    samples: list[FeedSample]           # feed clicks with a known category and |s| >= 1
    stats: collections.Counter          # "group/name" -> count, see analyse_user

    @property
    def js(self) -> float | None:
        """JS(p_src^u, p_rec^u), or None without categorised clicks in both domains."""
        if not self.search_clicks or not self.feed_clicks:
            return None
        return js_divergence(self.search_clicks, self.feed_clicks)


def analyse_user(user_id: int, rec_rows: Sequence[RecRow], search_rows: Sequence[SearchRow],
                 category_of: Mapping[int, int]) -> UserAnalysis:
    """One user's logs (kuaisar.LineParser's rec_inter / src_inter tuples) -> UserAnalysis.

    `category_of` maps item_id -> first-level category (kuaisar.MISSING = unknown). The result
    does not depend on the order of the rows.
    """
    stats: collections.Counter = collections.Counter()
    search_clicks: collections.Counter = collections.Counter()
    feed_clicks: collections.Counter = collections.Counter()
    shown_times: list[int] = []
    first_shown: dict[int, int] = {}  # category -> its earliest search impression
    for timestamp, _, _, item, clicked in search_rows:
        category = category_of.get(item, kuaisar.MISSING)
        stats["clicks/search"] += clicked
        if category == kuaisar.MISSING:
            stats["search_impressions/unknown_category"] += 1
            stats["clicks/search_unknown_category"] += clicked
            continue
        search_clicks[category] += clicked
        shown_times.append(timestamp)
        first_shown[category] = min(timestamp, first_shown.get(category, timestamp))
    shown_times.sort()
    stats["search_impressions/total"] += len(search_rows)
    # Categories shown but never clicked (count 0) are not part of the distribution.
    search_clicks = +search_clicks

    samples = []
    for timestamp, item, click in rec_rows:
        if not click:
            continue
        category = category_of.get(item, kuaisar.MISSING)
        stats["clicks/feed"] += 1
        stats["feed_positives/total"] += 1
        if category == kuaisar.MISSING:
            stats["clicks/feed_unknown_category"] += 1
            stats["feed_positives/unknown_category"] += 1
            continue
        feed_clicks[category] += 1
        s_size = bisect.bisect_left(shown_times, timestamp)  # impressions strictly before t
        if s_size == 0:
            stats["feed_positives/no_earlier_search_impression"] += 1
            continue
        stats["feed_positives/with_earlier_search_impression"] += 1
        in_s = int(first_shown.get(category, timestamp) < timestamp)
        samples.append(FeedSample(user_id, timestamp, item, category, s_size, in_s))
    samples.sort()

    stats["users/total"] += 1
    stats["users/no_search_rows"] += not search_rows
    stats["users/no_feed_rows"] += not rec_rows
    group = {(True, True): "with_both", (False, True): "without_search_clicks",
             (True, False): "without_feed_clicks", (False, False): "without_any_clicks"}
    stats["users/" + group[bool(search_clicks), bool(feed_clicks)]] += 1
    return UserAnalysis(search_clicks, feed_clicks, samples, stats)


def correlation(samples: Iterable[FeedSample], p_src: Mapping[int, float]) -> dict:
    """R_corr^1 and R_corr^2 (eqs 22-24) of eligible samples (p_src(category) > 0)."""
    hits, expected = [], []
    for sample in samples:
        hits.append(sample.in_s)
        expected.append(expected_hit_rate(p_src[sample.category], sample.s_size))
    if not hits:
        return {"samples": 0, "r_corr_1": None, "r_corr_2": None, "hit_rate": None,
                "expected_hit_rate": None}
    hit, exp = np.array(hits, dtype=np.float64), np.array(expected)
    return {"samples": len(hits), "r_corr_1": float(hit.mean() / exp.mean()),
            "r_corr_2": float((hit / exp).mean()), "hit_rate": float(hit.mean()),
            "expected_hit_rate": float(exp.mean())}


def shift_summary(js_values: Sequence[float]) -> dict:
    """Share with JS <= 0.5, mean, quantiles and histogram counts of per-user JS values."""
    values = np.asarray(js_values, dtype=np.float64)
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    summary = {"users": len(values),
               "histogram": {"bin_edges": np.round(edges, 6).tolist(), "counts": counts.tolist()}}
    if not len(values):
        return {**summary, "share_js_le_0_5": None, "share_shifted": None, "mean": None,
                "quantiles": None}
    share = float(np.mean(values <= SHIFT_THRESHOLD))
    return {**summary, "share_js_le_0_5": share, "share_shifted": 1.0 - share,
            "mean": float(values.mean()),
            "quantiles": {f"{q:g}": float(v) for q, v in zip(QUANTILES,
                                                             np.quantile(values, QUANTILES))}}


def histogram_png(js_values: Sequence[float], title: str) -> bytes:
    """The JS histogram as PNG bytes (matplotlib's Agg canvas: no display, no pyplot state)."""
    figure = Figure(figsize=HISTOGRAM_SIZE_INCHES, dpi=HISTOGRAM_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.hist(js_values, bins=HISTOGRAM_BINS, range=(0.0, 1.0), color="tab:blue",
              edgecolor="white")
    axes.axvline(SHIFT_THRESHOLD, color="tab:red", linestyle="--", label="JS = 0.5")
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("Jensen-Shannon divergence (base 2) of search vs feed click categories")
    axes.set_ylabel("users")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


# --- Beam transforms -------------------------------------------------------------------------
class AnalyseUsers(beam.DoFn):
    """(user_id, {rec_inter: [rows], src_inter: [rows]}) -> per-user JS records (main output),
    correlation samples, search-click counts per category and statistics (tagged outputs)."""

    SAMPLES, SEARCH_CLICKS, STATS = "samples", "search_clicks", "stats"

    def __init__(self, seed: int):
        self._seed = seed
        self._users = 0
        self._last_log = 0.0

    def start_bundle(self):
        # Counted per bundle and emitted once per key in finish_bundle (as build_tfrecords does).
        self._stats = collections.Counter()
        self._search_clicks = collections.Counter()

    def process(self, element, category_of):
        user_id, logs = element
        rec = logs[kuaisar.REC_INTER][0] if logs[kuaisar.REC_INTER] else []
        search = logs[kuaisar.SRC_INTER][0] if logs[kuaisar.SRC_INTER] else []
        result = analyse_user(user_id, rec, search, category_of)
        self._stats.update(result.stats)
        self._search_clicks.update(result.search_clicks)
        self._users += 1
        if self._users % 20_000 == 0 and time.monotonic() - self._last_log > 10:
            self._last_log = time.monotonic()
            LOG.info("analysed %s users so far (this worker)", f"{self._users:,}")
        for sample in result.samples:
            key = sample_key(self._seed, "sample", user_id, sample.timestamp, sample.item_id)
            yield beam.pvalue.TaggedOutput(self.SAMPLES, (key, sample))
        js = result.js
        if js is not None:
            yield UserShift(sample_key(self._seed, "user", user_id), user_id, js,
                            sum(result.search_clicks.values()), sum(result.feed_clicks.values()))

    def finish_bundle(self):
        for tag, counts in ((self.STATS, self._stats), (self.SEARCH_CLICKS, self._search_clicks)):
            for key, count in counts.items():
                yield beam.pvalue.TaggedOutput(tag, GlobalWindows.windowed_value((key, count)))


class WriteReport(beam.DoFn):
    """Writes analysis.json, the histogram and the two CSV files from the collected results."""

    def __init__(self, output: str, arguments: dict):
        self._output = output
        self._arguments = arguments

    def process(self, _, stats, users, samples, search_clicks):
        report, sampled = build_report(self._arguments, stats, users, samples, search_clicks)
        shift = report["interest_shift"]
        share = shift["share_js_le_0_5"]
        title = (f"{shift['users']:,} users; JS <= 0.5 for {share:.1%}" if share is not None
                 else "no user with clicks in both domains")
        files = {
            ANALYSIS_FILE: json.dumps(report, indent=2, sort_keys=True).encode("utf-8"),
            HISTOGRAM_FILE: histogram_png([user.js for user in users], title),
            JS_FILE: csv_bytes(UserShift._fields[1:], sorted(user[1:] for user in users)),
            SAMPLES_FILE: csv_bytes((*FeedSample._fields, "p_src", "expected"), sampled),
        }
        for name, content in files.items():
            with FileSystems.create(FileSystems.join(self._output, name)) as f:
                f.write(content)
        yield ANALYSIS_FILE


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def build_report(arguments: dict, stats: Mapping[str, int], users: Sequence[UserShift],
                 samples: Sequence[tuple[int, FeedSample]], search_clicks: Mapping[int, int]
                 ) -> tuple[dict, list[tuple]]:
    """analysis.json's content, and the sampled feed clicks with their eqs 22-24 terms."""
    total_clicks = sum(search_clicks.values())
    p_src = {c: n / total_clicks for c, n in search_clicks.items()}
    chosen = sorted(sample for _, sample in samples)
    sampled = [(*s, p_src[s.category], expected_hit_rate(p_src[s.category], s.s_size))
               for s in chosen]
    stats = {**dict.fromkeys(STAT_KEYS, 0), **stats}
    stats["users/sampled"] = len(users)
    stats["feed_positives/sampled"] = len(chosen)
    report = build_tfrecords.nest_keys(stats)
    for name in INPUT_FILES:  # a file with no row still gets its accounting
        for what in ("rows_read", "rows_used", "rows_rejected"):
            report.setdefault(name, {}).setdefault(what, 0)
    return {
        "arguments": arguments,
        "rows": {name: report.pop(name) for name in INPUT_FILES},
        **report,
        "interest_shift": shift_summary([user.js for user in users]),
        "correlation": {**correlation(chosen, p_src),
                        "p_src": {str(c): p for c, p in sorted(p_src.items())}},
    }, sampled


def is_eligible(keyed: tuple[int, FeedSample], search_clicks: Mapping[int, int]) -> bool:
    """A sample whose category someone clicked in search (p_src > 0)."""
    return search_clicks.get(keyed[1].category, 0) > 0


def build_pipeline(pipeline: beam.Pipeline, inputs: dict[str, tuple[str, kuaisar.Header]],
                   output: str, *, users: int, samples: int, seed: int, arguments: dict) -> None:
    """Parse -> per-user analysis -> global search-click counts -> the two draws -> the report."""
    parsed, stats = build_tfrecords.read_logs(pipeline, inputs, output)
    category_of = parsed[kuaisar.ITEM_FEATURES] | "Category per item" >> beam.Map(
        lambda kv: (kv[0], kv[1][1]))
    analysed = (build_tfrecords.group_by_user(parsed, (kuaisar.REC_INTER, kuaisar.SRC_INTER))
                | "Analyse users" >> beam.ParDo(
                    AnalyseUsers(seed), category_of=beam.pvalue.AsDict(category_of)).with_outputs(
                        AnalyseUsers.SAMPLES, AnalyseUsers.SEARCH_CLICKS, AnalyseUsers.STATS,
                        main="users"))
    stats.append(analysed[AnalyseUsers.STATS])
    search_clicks = beam.pvalue.AsSingleton(
        analysed[AnalyseUsers.SEARCH_CLICKS]
        | "Sum search clicks" >> beam.CombinePerKey(sum)
        | "Search clicks dict" >> beam.combiners.ToDict())

    candidates = analysed[AnalyseUsers.SAMPLES]
    stats.append(candidates | "Eligibility" >> beam.Map(
        lambda keyed, clicks: ("feed_positives/" + ("eligible" if is_eligible(keyed, clicks)
                                                    else "category_never_clicked_in_search"), 1),
        clicks=search_clicks))
    chosen_samples = (candidates
                      | "Eligible samples" >> beam.Filter(is_eligible, search_clicks)
                      | "Draw samples" >> beam.combiners.Top.Smallest(samples))
    chosen_users = analysed.users | "Draw users" >> beam.combiners.Top.Smallest(users)
    all_stats = (build_tfrecords.sum_then_flatten("stats", stats)
                 | "Sum stats" >> beam.CombinePerKey(sum)
                 | "Stats dict" >> beam.combiners.ToDict())
    _ = (pipeline
         | "Report trigger" >> beam.Create([None])
         | "Write report" >> beam.ParDo(
             WriteReport(output, arguments), stats=beam.pvalue.AsSingleton(all_stats),
             users=beam.pvalue.AsSingleton(chosen_users),
             samples=beam.pvalue.AsSingleton(chosen_samples), search_clicks=search_clicks))


# --- command line ----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog=build_tfrecords.BEAM_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="directory with the KuaiSAR CSV files")
    parser.add_argument("--output", required=True, help="output directory (any Beam filesystem)")
    parser.add_argument("--users", type=int, default=DEFAULT_USERS,
                        help=f"users drawn for the JS histogram (default {DEFAULT_USERS:,})")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"feed clicks drawn for R_corr (default {DEFAULT_SAMPLES:,})")
    parser.add_argument("--seed", type=int, default=0, help="seed of both draws (default 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the outputs of an earlier run in --output")
    args, beam_args = parser.parse_known_args(argv)
    for flag in ("users", "samples"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1 (got {getattr(args, flag)})")
    return args, build_tfrecords.with_local_defaults(beam_args)


def summary(report: dict) -> str:
    """The readable summary printed at the end of a run."""
    def number(value, digits: int = 3) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    users, shift = report.get("users", {}), report["interest_shift"]
    positives, corr = report.get("feed_positives", {}), report["correlation"]
    lines = ["Input rows:"]
    for name in INPUT_FILES:
        rows = report["rows"][name]
        lines.append(f"  {name:14s} read {rows['rows_read']:>11,}  used {rows['rows_used']:>11,}"
                     f"  rejected {rows['rows_rejected']:>7,}"
                     + (f"  {rows['rejected_by_reason']}" if rows.get("rejected_by_reason")
                        else ""))
    lines += [
        "Interest shift (per user: JS divergence, base 2, of first-level categories clicked in "
        "search vs in the feed):",
        f"  users {users.get('total', 0):,}: with clicks in both domains "
        f"{users.get('with_both', 0):,}; without search clicks "
        f"{users.get('without_search_clicks', 0):,}; without feed clicks "
        f"{users.get('without_feed_clicks', 0):,}; without any click "
        f"{users.get('without_any_clicks', 0):,}",
        f"  sampled {shift['users']:,} users: JS <= 0.5 for "
        + ("n/a" if shift["share_js_le_0_5"] is None else f"{shift['share_js_le_0_5']:.1%}")
        + f" (paper, KuaiSAR-small: 24.8%); mean {number(shift['mean'])}",
    ]
    if shift["quantiles"]:
        lines.append("  quantiles " + "  ".join(f"{q}: {v:.3f}" for q, v in
                                                 shift["quantiles"].items()))
    lines += [
        "Cross-domain correlation (eqs 22-24 on categories; > 1 = search predicts the feed):",
        f"  feed clicks {positives.get('total', 0):,}: eligible {positives.get('eligible', 0):,};"
        f" excluded: unknown category {positives.get('unknown_category', 0):,}, no earlier "
        f"search impression {positives.get('no_earlier_search_impression', 0):,}, category never"
        f" clicked in search {positives.get('category_never_clicked_in_search', 0):,}",
        f"  sampled {corr['samples']:,}: R_corr^1 = {number(corr['r_corr_1'])}, R_corr^2 = "
        f"{number(corr['r_corr_2'])} (hit rate {number(corr['hit_rate'])} vs "
        f"{number(corr['expected_hit_rate'])} expected without correlation; paper, "
        "KuaiSAR-small: 1.51 / 1.50)",
    ]
    unknown = report.get("clicks", {})
    if unknown.get("search_unknown_category") or unknown.get("feed_unknown_category"):
        lines.append(f"  clicks on items without a category (left out): search "
                     f"{unknown.get('search_unknown_category', 0):,}, feed "
                     f"{unknown.get('feed_unknown_category', 0):,}")
    return "\n".join(lines)


def run(argv: Sequence[str] | None = None) -> dict:
    """Runs the job; returns analysis.json's content.

    Raises build_tfrecords.InputError for user mistakes."""
    args, beam_args = parse_args(argv)
    inputs = {name: build_tfrecords.find_input(args.input, name) for name in INPUT_FILES}
    # Written into a staging directory, swapped in when the job succeeded.
    out = build_tfrecords.StagedOutput(args.output, OUTPUTS, overwrite=args.overwrite)
    LOG.info("reading %s", ", ".join(path for path, _ in inputs.values()))
    started = time.monotonic()
    arguments = {"input": args.input, "users": args.users, "samples": args.samples,
                 "seed": args.seed}
    try:
        with beam.Pipeline(options=PipelineOptions(beam_args)) as pipeline:
            build_pipeline(pipeline, inputs, out.staging, users=args.users,
                           samples=args.samples, seed=args.seed, arguments=arguments)
        with FileSystems.open(out.staged(ANALYSIS_FILE)) as f:
            report = json.loads(f.read())
    except BaseException:
        out.discard()
        raise
    out.publish()
    elapsed = time.monotonic() - started
    print(summary(report))
    print(f"Done in {elapsed:.1f} s; outputs in {args.output}: "
          + ", ".join(name for name in OUTPUTS if name != S.DEAD_LETTER_DIR)
          + (f", {S.DEAD_LETTER_DIR}/" if any(r["rows_rejected"] for r in report["rows"].values())
             else ""))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    build_tfrecords.configure_logging()
    try:
        run(argv)
    except build_tfrecords.InputError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Run the importable module rather than __main__: Beam's worker processes unpickle the
    # classes this job ships (FeedSample, the DoFns) by module name.
    from pipelines import analysis
    sys.exit(analysis.main())
