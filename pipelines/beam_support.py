"""What both Beam jobs share about running and writing, independent of the data.

- `LocalRunner`: the local default runner. Beam 2.77's `DirectRunner` first tries to download and
  start Prism (a Go binary) and falls back to its FnApiRunner after logging an exception; with a
  cached Prism binary it would silently switch engines. This is that FnApiRunner, chosen
  explicitly: `--direct_running_mode` and `--direct_num_workers` work as on the DirectRunner.
- `WriteSortedShards`: TFRecord shards whose bytes depend only on the records and the shard
  count, not on the runner, the bundling or the run (Beam's WriteToTFRecord assigns records to
  shards at random and writes them in arrival order).
- Running and writing a job: `InputError` (a user mistake, reported without a traceback),
  `LOCAL_DEFAULTS` / `with_local_defaults` (the local runner's options unless --runner is given),
  `configure_logging`, and `StagedOutput` (outputs written into a staging directory and swapped
  in only when the job succeeded; `move` / `remove` on any Beam filesystem).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from typing import Iterable, Sequence

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
# Locally: Beam's FnApiRunner in one process. Its multi_processing mode (one worker process per
# core, 1.7x faster on 2 cores) loses elements where a Flatten merges branches that several
# workers produce (Beam 2.77; docs/RESULTS.md, "Examples lost by the multi-process local
# runner"): a 6,000-user build wrote 124,463 of its 212,308 training examples. It stays
# available as an explicit option; every build checks the examples it wrote
# (build_stats.check_written).
# The runner is named explicitly: Beam's DirectRunner would first try to download Prism.
LOCAL_DEFAULTS = [f"--runner={LOCAL_RUNNER}", "--direct_running_mode=in_memory",
                  "--default_sdk_harness_log_level=WARNING",
                  '--sdk_harness_log_level_overrides={"pipelines": "INFO"}']


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


class InputError(ValueError):
    """A user mistake in the job's input or flags, reported without a traceback."""


BEAM_EPILOG = (
    "Other flags must be Beam pipeline options, passed through unchanged (any other is an "
    "error) "
    "(e.g. --runner=DataflowRunner; README, \"Running on a cluster\").\n"
    "Without --runner the job runs locally with:\n  " + " ".join(LOCAL_DEFAULTS) + "\n"
    "(--runner=DirectRunner instead would first try Beam's Prism runner.)")


def unknown_beam_args(beam_args: Sequence[str]) -> list[str]:
    """The arguments that no Beam pipeline option takes (Beam itself only logs "Discarding
    unparseable args" and runs with its defaults): parsed as PipelineOptions.get_all_options
    does, with every options class defined (pipeline_options holds those of Beam's runners)."""
    from apache_beam.options.pipeline_options import _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    classes = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)  # pylint: disable=protected-access
    _, unknown = parser.parse_known_args(list(beam_args))
    return unknown


def with_local_defaults(beam_args: list[str]) -> list[str]:
    """Beam options with LOCAL_DEFAULTS filled in, unless a --runner was given. An argument that
    neither the job's parser nor Beam knows (a misspelled flag: `--min_count 5`) is an
    InputError."""
    unknown = unknown_beam_args(beam_args)
    if unknown:
        raise InputError(f"unrecognized arguments: {' '.join(unknown)} (neither a flag of this "
                         "job, see --help, nor a Beam pipeline option)")
    given = {a.split("=", 1)[0] for a in beam_args if a.startswith("--")}
    if "--runner" in given:
        return beam_args
    return [d for d in LOCAL_DEFAULTS if d.split("=", 1)[0] not in given] + beam_args


def configure_logging() -> None:
    """INFO from our jobs, warnings only from Beam and absl."""
    logging.basicConfig(level=logging.INFO, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apache_beam", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) is None


def _exists(path: str) -> bool:
    """A file or a directory; on an object store a "directory" is any object under the prefix."""
    if FileSystems.exists(path):
        return True
    if _is_local(path):
        return False
    try:
        return bool(FileSystems.match([FileSystems.join(path, "**")], [1])[0].metadata_list)
    except Exception:  # pylint: disable=broad-except  (nothing there: some stores raise)
        return False


def move(source: str, destination: str, per_file: bool | None = None) -> None:
    """Moves a file or a directory tree. Locally one rename (atomic on one filesystem); on an
    object store (per_file, the default there) every object is copied and deleted in turn."""
    if not (per_file if per_file is not None else not _is_local(source)):
        FileSystems.rename([source], [destination])
        return
    if FileSystems.exists(source) and not os.path.isdir(source):
        FileSystems.rename([source], [destination])
        return
    files = [m.path for m in FileSystems.match([FileSystems.join(source, "**")])[0].metadata_list]
    targets = [destination + path[len(source):] for path in files]
    if _is_local(destination):  # a local per-file move (tests) needs the directories
        for directory in sorted({os.path.dirname(t) for t in targets}):
            os.makedirs(directory, exist_ok=True)
    FileSystems.rename(files, targets)
    if _is_local(source):
        FileSystems.delete([source])


def remove(path: str) -> None:
    """Deletes a file or a directory tree (on an object store: every object under the prefix)."""
    if _is_local(path) or FileSystems.exists(path):
        FileSystems.delete([path])
    else:
        FileSystems.delete([path.rstrip("/") + "/"])


class StagedOutput:
    """A job's outputs, written into a staging directory and swapped in only on success.

    `names` are the job's outputs in `output`; `stale` are outputs of later stages derived from an
    earlier run there (the augment stage's table, for instance): a published run removes them,
    so nothing reads them as this data's. Without `overwrite`, an earlier run's outputs (of either
    kind) are an InputError before anything runs. The staging directory is `output`/.staging-*;
    `publish()` moves the earlier outputs into `output`/.replaced-*, the new ones into place and
    deletes both; `fail()` keeps the run's outputs in `output`/failed_run/ for inspection and
    leaves the earlier ones as they were; `discard()` deletes the staging directory (a crash).

    Locally each move is one rename, so the swap takes milliseconds and a crash during it leaves
    every file in a named directory. On an object store (gs://) the swap copies object by object
    (not atomic: a reader during the swap may see a mix), and a "directory" exists when an object
    is under its prefix.
    """

    FAILED = "failed_run"

    def __init__(self, output: str, names: Sequence[str], *, overwrite: bool,
                 stale: Sequence[str] = ()):
        self.output, self.names, self.stale = output, tuple(names), tuple(stale)
        earlier = [name for name in (*self.names, *self.stale) if _exists(self.path(name))]
        if earlier and not overwrite:
            raise InputError(f"{output} already holds {earlier}: pass --overwrite to replace "
                             "them (they are replaced only when the new run succeeds)")
        self._run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.staging = self.path(f".staging-{self._run_id}")
        try:
            FileSystems.mkdirs(self.staging)  # creates `output` too
        except OSError as error:
            raise InputError(f"cannot write to {output}: {error}") from None

    def path(self, name: str) -> str:
        return FileSystems.join(self.output, name)

    def staged(self, name: str) -> str:
        return FileSystems.join(self.staging, name)

    def publish(self) -> None:
        replaced = [name for name in (*self.names, *self.stale, self.FAILED)
                    if _exists(self.path(name))]
        trash = self.path(f".replaced-{self._run_id}")
        if replaced:
            FileSystems.mkdirs(trash)
            for name in replaced:
                move(self.path(name), FileSystems.join(trash, name))
        for name in self.names:
            if _exists(self.staged(name)):
                move(self.staged(name), self.path(name))
        for path in (trash, self.staging):
            if _exists(path):
                remove(path)

    def fail(self) -> str:
        """Keeps this run's outputs in `output`/failed_run/ (replacing an older one); its path."""
        failed = self.path(self.FAILED)
        if _exists(failed):
            remove(failed)
        move(self.staging, failed)
        return failed

    def discard(self) -> None:
        if _exists(self.staging):
            remove(self.staging)
