"""What both Beam jobs share about running and writing, independent of the data.

- `LocalRunner`: the local default runner. Beam 2.77's `DirectRunner` first tries to download and
  start Prism (a Go binary) and falls back to its FnApiRunner after logging an exception; with a
  cached Prism binary it would silently switch engines. This is that FnApiRunner, chosen
  explicitly: `--direct_running_mode` and `--direct_num_workers` work as on the DirectRunner.
- `WriteSortedShards`: TFRecord shards whose bytes depend only on the records and the shard
  count, not on the runner, the bundling or the run (Beam's WriteToTFRecord assigns records to
  shards at random and writes them in arrival order).
"""

from __future__ import annotations

import hashlib
from typing import Iterable

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.portability.portable_runner import JobServiceHandle

# The qualified name that --runner takes (Beam imports the class by it).
LOCAL_RUNNER = f"{__name__}.LocalRunner"


class LocalRunner(fn_runner.FnApiRunner):
    """Beam's DirectRunner for batch pipelines without its Prism attempt.

    The DirectRunner hands its FnApiRunner the pipeline options so that the SDK worker processes
    see them (e.g. --default_sdk_harness_log_level); a bare `--runner=FnApiRunner` would not.
    """

    def run_pipeline(self, pipeline: beam.Pipeline, options: PipelineOptions):
        encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
        self._provision_info = fn_runner.ExtendedProvisionInfo(
            beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
        return super().run_pipeline(pipeline, options)


def shard_of(record: bytes, num_shards: int) -> int:
    """The shard of a record: a hash of its bytes (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(record, digest_size=8).digest(), "big") % num_shards


def shard_path(prefix: str, shard: int, num_shards: int, suffix: str) -> str:
    """Beam's default shard name: PREFIX-00001-of-00004SUFFIX."""
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}{suffix}"


class _WriteShard(beam.DoFn):
    def __init__(self, prefix: str, num_shards: int, suffix: str):
        self._prefix, self._num_shards, self._suffix = prefix, num_shards, suffix

    def process(self, element: tuple[int, Iterable[bytes | None]]):
        shard, records = element
        path = shard_path(self._prefix, shard, self._num_shards, self._suffix)
        temp = FileSystems.join(FileSystems.split(path)[0],
                                ".tmp-" + FileSystems.split(path)[1])
        # The whole shard is sorted in this worker's memory: --num-shards sets its size.
        ordered = sorted(r for r in records if r is not None)
        with FileSystems.create(temp, compression_type=CompressionTypes.GZIP) as f:
            for record in ordered:
                _TFRecordUtil.write_record(f, record)
        # Written under a temporary name first: a retried or failed bundle never leaves a
        # truncated shard under the final name.
        if FileSystems.exists(path):
            FileSystems.delete([path])
        FileSystems.rename([temp], [path])
        yield path


class WriteSortedShards(beam.PTransform):
    """Writes bytes records as `num_shards` gzip TFRecord files PREFIX-SSSSS-of-NNNNN SUFFIX.

    A record's shard is a hash of its bytes and each shard is written sorted, so the same records
    give byte-identical files on any runner, in any run. Every shard file exists, empty or not.
    Each shard is held (and sorted) in one worker's memory: pick num_shards so that a shard fits.
    Outputs the paths written.
    """

    def __init__(self, prefix: str, num_shards: int, suffix: str = ".tfrecord.gz"):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self._prefix, self._num_shards, self._suffix = prefix, num_shards, suffix

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        n = self._num_shards
        keyed = records | "Key by shard" >> beam.Map(lambda r: (shard_of(r, n), r))
        # One None per shard, so that a shard no record hashes to is still written (empty).
        every_shard = (records.pipeline | "Shard numbers" >> beam.Create(range(n))
                       | "Empty shard" >> beam.Map(lambda s: (s, None)))
        return ((keyed, every_shard) | "With every shard" >> beam.Flatten()
                | "Group by shard" >> beam.GroupByKey()
                | "Write shard" >> beam.ParDo(_WriteShard(self._prefix, n, self._suffix)))
