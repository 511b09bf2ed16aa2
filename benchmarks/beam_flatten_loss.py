"""Does the local Beam runner keep every element through a Flatten? (docs/RESULTS.md, "Examples
lost by the multi-process local runner")

    python -m benchmarks.beam_flatten_loss [--elements 80000] [--bytes 4000]
        [--mode multi_processing|in_memory]

Two branches of `--elements` records each, spread over the workers by a Reshuffle, are merged
by a Flatten and grouped by key (what `WriteSortedShards` did); the grouped records are counted
in the workers and the count is compared with what went in. Beam 2.77's multi-process
FnApiRunner lost some on this 2-core machine (the count varies from run to run); the in_memory
mode, the local default now, did not.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import beam_support


class _CountGroup(beam.DoFn):
    """Appends each group's size to a file (a side channel no Beam aggregation passes through)."""

    def __init__(self, path: str):
        self._path = path

    def process(self, element):
        _, records = element
        with open(self._path, "a", encoding="utf-8") as f:
            f.write(f"{sum(1 for _ in records)}\n")
        yield element[0]


def run(elements: int, size: int, mode: str) -> int:
    """Records counted after the Flatten and GroupByKey (2 * elements went in)."""
    with tempfile.TemporaryDirectory() as work:
        counts = os.path.join(work, "counts.txt")
        options = PipelineOptions([f"--direct_running_mode={mode}", "--direct_num_workers=2"])
        with beam.Pipeline(runner=beam_support.LocalRunner(), options=options) as p:
            branches = [
                p | f"Create {name}" >> beam.Create(range(elements))
                | f"Spread {name}" >> beam.Reshuffle()
                | f"Record {name}" >> beam.Map(lambda i, n=name: (i % 1000, n.encode() * size))
                for name in ("a", "b")]
            _ = (branches | beam.Flatten() | beam.GroupByKey()
                 | beam.ParDo(_CountGroup(counts)))
        with open(counts, encoding="utf-8") as f:
            return sum(int(line) for line in f)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=80_000)
    parser.add_argument("--bytes", type=int, default=4_000)
    parser.add_argument("--mode", default="multi_processing",
                        choices=("multi_processing", "in_memory"))
    args = parser.parse_args(argv)
    got = run(args.elements, args.bytes, args.mode)
    print(f"{args.mode}: {got:,} of {2 * args.elements:,} records after Flatten + GroupByKey"
          f" ({2 * args.elements - got:,} lost)")


if __name__ == "__main__":
    main()
