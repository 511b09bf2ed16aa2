"""The measures of pipelines.analysis (paper sec 5.2) as pure functions, the units under test.

`js_divergence` and `analyse_user` give one user's interest shift (JS of search vs feed click
categories) and correlation samples; `expected_hit_rate` and `correlation` the ratios of eqs
22-24; `sample_key` the deterministic random draw; `shift_summary` and `histogram_png` the
summary and figure of the per-user JS values. The definitions are in pipelines/analysis.py's
docstring.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import hashlib
import io
import math
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipelines import kuaisar
from pipelines.user_examples import RecRow, SearchRow

SHIFT_THRESHOLD = 0.5          # the paper's cut: JS >= 0.5 = shifted interests
QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
HISTOGRAM_BINS = 20
HISTOGRAM_SIZE_INCHES, HISTOGRAM_DPI = (8.0, 5.0), 100  # -> an 800 x 500 PNG


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
