"""Logs by day (`python -m pipelines.synthetic --days N [--start-day D]`): consecutive days of one
world, with new users and items appearing every day and item popularity drifting.

The world (topics, tastes, query pools) is drawn once from the seed for every user and item that
will ever exist. Day d (1-based) then has:
- users: the first `users` on day 1 and `new_share * users` more each later day (ids stay
  1..N, a new user's id above every earlier one), every one of them active;
- items: the first `items` (by their index in the world) on day 1 and `new_share * items` more
  each day, each sub-topic keeping its most popular item from day 1 on;
- popularity: an item's weight within its sub-topic is its Zipf weight times
  exp(drift * a random walk over the days), so the head of a sub-topic moves from day to day;
  a new item starts at its Zipf weight times `new_boost` (new videos are pushed);
- search sessions and feed impressions drawn as by `generate` (world.search_log, rec_log) from a
  stream of its own, (seed, day), inside the 24 h of that day (START_MS + (d - 1) days).

A day's rows are the same whichever window writes it, so `--start-day 2 --days 1` is day 2 of
`--days 2`. The files hold the window's days together, in KuaiSAR's format; user_features and
item_features list every user and item that exists by the window's last day (user levels
count the window's activity).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from pipelines import kuaisar
from pipelines.synthetic.regimes import ITEM_ZIPF, REGIMES, START_MS, ArgumentError, validate
from pipelines.synthetic.rows import item_columns, rec_columns, src_columns, user_columns
from pipelines.synthetic.world import World, _grouped_sampler, _zipf_weights, rec_log, search_log

DAY_MS = 24 * 3600 * 1000
DEFAULT_NEW_SHARE = 0.2
DEFAULT_DRIFT = 0.3
DEFAULT_NEW_BOOST = 2.0
DAYS_MANIFEST = "synthetic_days_manifest.json"
# The world is drawn for this many days whatever the window, so that day d is the same in every
# window (the last day a window may reach).
HORIZON_DAYS = 30


@dataclasses.dataclass(frozen=True)
class Days:
    """Who and what exists on each day of a world of `users` + `items` on day 1."""

    users: int
    items: int
    new_share: float = DEFAULT_NEW_SHARE

    def users_on(self, day: int) -> int:
        return self.users + int(round(self.new_share * self.users)) * (day - 1)

    def items_on(self, day: int) -> int:
        return self.items + int(round(self.new_share * self.items)) * (day - 1)


def _item_order(world: World) -> np.ndarray:
    """World item indices in the order they appear: every sub-topic's most popular item first
    (so each sub-topic has an item on day 1), then the others in a seeded shuffle."""
    first = np.searchsorted(world.item_sub, np.arange(world.item_sub.max() + 1))
    rest = np.setdiff1d(np.arange(len(world.item_sub)), first)
    return np.concatenate([first, np.random.default_rng(len(rest)).permutation(rest)])


def generate_days(output_dir: str, days: int, start_day: int = 1, users: int = 300,
                  items: int = 2000, seed: int = 0, regime: str = "default",
                  new_share: float = DEFAULT_NEW_SHARE, drift: float = DEFAULT_DRIFT,
                  new_boost: float = DEFAULT_NEW_BOOST, gzip: bool = False) -> dict[str, Any]:
    """Writes days start_day .. start_day + days - 1 into output_dir; returns the manifest."""
    from pipelines.synthetic.writer import _write_csv

    if days < 1 or start_day < 1:
        raise ArgumentError("--days and --start-day must be >= 1")
    if not 0.0 <= new_share <= 1.0 or drift < 0 or new_boost <= 0:
        raise ArgumentError("--new-share must be in [0, 1], --drift >= 0, new_boost > 0")
    if regime not in REGIMES:
        raise ArgumentError(f"--regime must be one of {sorted(REGIMES)} (got {regime!r})")
    spec = REGIMES[regime]
    last = start_day + days - 1
    if last > HORIZON_DAYS:
        raise ArgumentError(f"--start-day + --days - 1 must be <= {HORIZON_DAYS}")
    plan = Days(users, items, new_share)
    total_users, total_items = plan.users_on(HORIZON_DAYS), plan.items_on(HORIZON_DAYS)
    validate(users, items, seed, 0, spec.rec_per_user, spec.sessions_per_user,
             spec.search_feed_mix, spec.queries_per_subtopic, spec.subtopics)
    world_seed, walk_seed, day_seed = np.random.SeedSequence(seed).spawn(3)
    world = World(np.random.default_rng(world_seed), total_users, total_items, spec)
    order = _item_order(world)
    debut = np.empty(total_items, np.int64)       # the day each world item appears
    for day in range(HORIZON_DAYS, 0, -1):
        debut[order[:plan.items_on(day)]] = day
    zipf = _zipf_weights(world.item_sub, ITEM_ZIPF)
    steps = np.random.default_rng(walk_seed).normal(0.0, 1.0, (HORIZON_DAYS, total_items))
    walk = np.cumsum(steps, axis=0)
    day_seeds = day_seed.spawn(HORIZON_DAYS)

    parts: dict[str, list] = {"rec": [], "src": []}
    sessions = np.zeros(total_users, np.int64)
    recs = np.zeros(total_users, np.int64)
    for day in range(start_day, last + 1):
        rng = np.random.default_rng(day_seeds[day - 1])
        active = debut <= day
        weights = zipf * np.exp(drift * walk[day - 1]) * active
        weights = np.where(debut == day, weights * new_boost, weights) if day > 1 else weights
        world.draw_item = _grouped_sampler(world.item_sub, weights)
        n_users = plan.users_on(day)
        day_sessions = np.zeros(total_users, np.int64)
        day_recs = np.zeros(total_users, np.int64)
        day_sessions[:n_users] = np.maximum(1, rng.poisson(spec.sessions_per_user, n_users))
        day_recs[:n_users] = np.maximum(3, rng.poisson(spec.rec_per_user, n_users))
        search = search_log(world, rng, day_sessions, DAY_MS)
        # Off-topic results are drawn from every item: one not out yet becomes an item of its
        # sub-topic that is (same relevance to the query).
        early = ~active[search["row_item"]]
        search["row_item"][early] = world.draw_item(world.item_sub[search["row_item"][early]],
                                                    rng)
        rec = rec_log(world, rng, day_recs, DAY_MS, search)
        early = ~active[rec["item"]]   # a creator's video not out yet (the creator regime)
        rec["item"][early] = world.draw_item(world.item_sub[rec["item"][early]], rng)
        offset = (day - 1) * DAY_MS
        search["sess_time"] = search["sess_time"] + offset
        rec["ts"] = rec["ts"] + offset
        user_ids = np.arange(1, total_users + 1)
        parts["rec"].append(rec_columns(world, rng, rec, user_ids))
        parts["src"].append(src_columns(world, rng, search, user_ids))
        sessions += day_sessions
        recs += day_recs

    n_users, exists = plan.users_on(last), debut <= last
    # Drawn for every user and item of the horizon, from streams of their own, then cut to the
    # window: a user's or an item's features are the same in every window.
    user_seed, item_seed = np.random.SeedSequence([seed, 1]).spawn(2)
    users_cols = user_columns(np.random.default_rng(user_seed), np.arange(1, total_users + 1),
                              sessions, recs, spec.sessions_per_user * days,
                              spec.rec_per_user * days)
    users_cols = [column[:n_users] for column in users_cols]
    items_cols = item_columns(world, np.random.default_rng(item_seed))
    item_order = np.argsort(world.item_ids)       # item_columns' row order
    keep = exists[item_order]
    items_cols = [[cell for cell, k in zip(column, keep) if k] for column in items_cols]
    columns = {
        kuaisar.REC_INTER: [sum((p[i] for p in parts["rec"]), []) for i in
                            range(len(parts["rec"][0]))],
        kuaisar.SRC_INTER: [sum((p[i] for p in parts["src"]), []) for i in
                            range(len(parts["src"][0]))],
        kuaisar.USER_FEATURES: users_cols,
        kuaisar.ITEM_FEATURES: items_cols,
    }
    os.makedirs(output_dir, exist_ok=True)
    suffix = ".csv.gz" if gzip else ".csv"
    for name in kuaisar.LOG_FILES:
        stale = os.path.join(output_dir, name + (".csv" if gzip else ".csv.gz"))
        if os.path.exists(stale):
            os.remove(stale)
        _write_csv(os.path.join(output_dir, name + suffix), kuaisar.COLUMNS[name], columns[name],
                   [], gzip)
    manifest = {
        "arguments": dict(days=days, start_day=start_day, users=users, items=items, seed=seed,
                          regime=regime, new_share=new_share, drift=drift, new_boost=new_boost),
        "days": {str(day): {"start_ms": START_MS + (day - 1) * DAY_MS,
                            "users": plan.users_on(day), "items": plan.items_on(day)}
                 for day in range(start_day, last + 1)},
        "rows": {name: len(columns[name][0]) for name in kuaisar.LOG_FILES},
    }
    with open(os.path.join(output_dir, DAYS_MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
    return manifest
