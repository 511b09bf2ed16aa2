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

Runs locally like pipelines.build_tfrecords (pipelines.beam_support.LocalRunner, one process:
Beam's multi-process mode loses elements, README "Running on a cluster"); other Beam options
(--runner=DataflowRunner --project ... / PortableRunner) pass through unchanged.
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import json
import logging
import sys
import time
from typing import Iterable, Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindows

from pipelines import kuaisar
from pipelines.beam_support import (
    BEAM_EPILOG,
    InputError,
    StagedOutput,
    configure_logging,
    with_local_defaults,
)
from pipelines.log_reading import (
    find_input,
    group_by_user,
    nest_keys,
    read_logs,
    sum_then_flatten,
)
from pipelines.shift_measures import (
    FeedSample,
    UserShift,
    analyse_user,
    correlation,
    expected_hit_rate,
    histogram_png,
    sample_key,
    shift_summary,
)
from qrec_tf import schema as S

LOG = logging.getLogger("pipelines.analysis")
PROG = "python -m pipelines.analysis"
INPUT_FILES = (kuaisar.REC_INTER, kuaisar.SRC_INTER, kuaisar.ITEM_FEATURES)
ANALYSIS_FILE = "analysis.json"
HISTOGRAM_FILE = "js_histogram.png"
JS_FILE = "js_per_user.csv"
SAMPLES_FILE = "correlation_samples.csv"
OUTPUTS = (ANALYSIS_FILE, HISTOGRAM_FILE, JS_FILE, SAMPLES_FILE, S.DEAD_LETTER_DIR)
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
    report = nest_keys(stats)
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
    parsed, stats = read_logs(pipeline, inputs, output)
    category_of = parsed[kuaisar.ITEM_FEATURES] | "Category per item" >> beam.Map(
        lambda kv: (kv[0], kv[1][1]))
    analysed = (group_by_user(parsed, (kuaisar.REC_INTER, kuaisar.SRC_INTER))
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
    all_stats = (sum_then_flatten("stats", stats)
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
        epilog=BEAM_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return args, with_local_defaults(beam_args)


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
    """Runs the job; returns analysis.json's content; raises InputError for user mistakes."""
    args, beam_args = parse_args(argv)
    inputs = {name: find_input(args.input, name) for name in INPUT_FILES}
    # Written into a staging directory, swapped in when the job succeeded.
    out = StagedOutput(args.output, OUTPUTS, overwrite=args.overwrite)
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
    configure_logging()
    try:
        run(argv)
    except InputError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    # Run the importable module rather than __main__: Beam's worker processes unpickle the
    # classes this job ships (FeedSample, the DoFns) by module name.
    from pipelines import analysis
    sys.exit(analysis.main())
