"""Exports a trained model as a SavedModel for TF Serving: a new numbered version directory.

    python -m qrec_tf.export --model-dir DIR --output export/<model_name> [--data DIR] [--no-xla]

Layout (TF Serving's): `<output>/<version>/saved_model.pb + variables/ + assets.extra/`. The
version is one more than the largest numbered version already under `<output>` (1 for the first
export), so a server watching `<output>` picks the new export up as the newest version. The version
is written to a hidden temporary directory next to it and renamed into place only when complete
and verified, so a server polling `<output>` never sees a half-written version.

Signatures (docs/ARCHITECTURE.md, "Serving"); names, dtypes and shapes come from
`qrec_tf.schema`, so a feature added to the schema appears in every signature:

- `serving_default`: one row per (user, candidate): every model feature [B, *shape] (raw ids,
  sequences left-padded with -1 / "") -> `ctr` float32 [B].
- `score_candidates`: users' context once, their candidates as a matrix: every non-item model
  feature [U, *shape] and `candidate_<item feature>` [U, N] -> `ctr` float32 [U, N]. One user is
  U = 1; inside, the user side is computed once per user, and everything after the vocabulary
  lookups runs as one XLA computation (N padded by at most 1/2, users to a power of two: one
  compilation per bucket). TF Serving needs `--xla_cpu_compilation_enabled=true` for it;
  `--no-xla` leaves XLA out. Every input has the users on axis 0 so that TF Serving's request
  batching (`--enable_batching`, which batches every signature and rejects inputs whose 0th
  dimensions differ) can batch these requests too.
- `from_examples`: serialized tf.Example [B] (`examples`), parsed with the schema's spec minus the
  label, the training-only targets and the timestamp -> `ctr` float32 [B].

Vocabularies are inside the graph (raw ids in; unseen ids map to the OOV index). Only variables
that these signatures read are saved: the training-only parts (NIP targets, the contrastive
similarity and its positives table) are not in the served graph. `assets.extra/
tf_serving_warmup_requests` holds one request each for serving_default and from_examples and one
score_candidates request per candidate bucket up to --warmup-max-candidates (default 512: 13
buckets), which TF Serving replays on load, so that no first request of those sizes compiles.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

from qrec_tf import candidate_scoring, data, model_layout
from qrec_tf import schema as S
from qrec_tf.candidate_scoring import candidate_bucket
from qrec_tf.data_dir import DataDirectory
from qrec_tf.evaluate import load_trained_model
from qrec_tf.export_staging import (  # noqa: F401 (this module's API too)
    STAGING_PREFIX,
    STALE_STAGING_SECONDS,
    remove_stale_staging,
    staging_directory,
)
from qrec_tf.models.base import CTRModel
from qrec_tf.train import TrainingDiverged, check_finite_weights
from qrec_tf.version_names import check_version, parse_version

LOG = logging.getLogger("qrec_tf.export")

SERVING_DEFAULT = "serving_default"
SCORE_CANDIDATES = "score_candidates"
FROM_EXAMPLES = "from_examples"
SIGNATURES = (SERVING_DEFAULT, SCORE_CANDIDATES, FROM_EXAMPLES)
OUTPUT_KEY = "ctr"
EXAMPLES_KEY = "examples"
CANDIDATE_PREFIX = "candidate_"
CANDIDATE_GROUP = "item"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
TOLERANCE = 1e-5
# The warmup file compiles score_candidates for one user and every candidate bucket up to this
# many candidates (13 buckets: 8, 12, 16, 24, .., 384, 512): a larger request, or one of several
# users, pays XLA's compilation (1.5-3 s) on the first request of its bucket.
WARMUP_MAX_CANDIDATES = 512


# --- signature specs (all derived from the schema) ---------------------------------------------
def row_specs(schema: S.Schema) -> dict[str, tf.TensorSpec]:
    """serving_default inputs: every model feature, [B, *shape]."""
    return schema.tensor_specs(schema.model_features)


def candidate_features(schema: S.Schema) -> tuple[S.Feature, ...]:
    """The model features that describe the candidate item (sent N times per user)."""
    return tuple(f for f in schema.model_features if f.group == CANDIDATE_GROUP)


def context_features(schema: S.Schema) -> tuple[S.Feature, ...]:
    """The model features that describe the user and its history (sent once per user)."""
    return tuple(f for f in schema.model_features if f.group != CANDIDATE_GROUP)


def candidate_input_name(feature_name: str) -> str:
    return CANDIDATE_PREFIX + feature_name


def score_candidates_specs(schema: S.Schema) -> dict[str, tf.TensorSpec]:
    """score_candidates inputs: context [U, *shape], candidate_<item feature> [U, N]."""
    specs = schema.tensor_specs(context_features(schema))
    for f in candidate_features(schema):
        if f.shape:
            raise ValueError(f"candidate feature {f.name!r} has shape {f.shape}; "
                             "score_candidates supports scalar item features only")
        name = candidate_input_name(f.name)
        specs[name] = tf.TensorSpec((None, None), f.tf_dtype, name=name)
    return specs


def example_parse_names(schema: S.Schema) -> list[str]:
    """from_examples parses these (every model feature; no label, NIP targets or timestamp)."""
    return [f.name for f in schema.model_features]


def examples_spec() -> tf.TensorSpec:
    return tf.TensorSpec((None,), tf.string, name=EXAMPLES_KEY)


# --- the serving functions ---------------------------------------------------------------------
def serving_functions(model: CTRModel, schema: S.Schema, xla: bool = True
                      ) -> dict[str, tuple[Callable, tf.TensorSpec | dict]]:
    """name -> (python function, input signature) of the three signatures; `xla`: score_candidates
    with its XLA part (`candidate_scoring.score_candidates(compiled=True)`)."""
    candidates = candidate_features(schema)
    context = context_features(schema)
    parse_spec = schema.parse_spec(example_parse_names(schema))

    def serving_default(features):
        return {OUTPUT_KEY: model(features, training=False)}

    candidate_names = [candidate_input_name(f.name) for f in candidates]
    context_names = [f.name for f in context]
    shape_rule = (f"score_candidates: each candidate_* input must have the shape of "
                  f"{candidate_input_name(S.ITEM_ID)} (users, candidates) and each other input "
                  "one row per user; these do not:")

    def score_candidates(inputs):
        shape = tf.shape(inputs[candidate_input_name(S.ITEM_ID)])          # [U, N]
        # One assertion for all inputs rather than one per input: fewer graph ops per request.
        fits = tf.concat([
            tf.reduce_all(tf.stack([tf.shape(inputs[n]) for n in candidate_names]) == shape,
                          axis=1),
            tf.stack([tf.shape(inputs[n])[0] for n in context_names]) == shape[0]], 0)
        names = tf.constant(candidate_names + context_names)
        with tf.control_dependencies([tf.debugging.Assert(
                tf.reduce_all(fits), [shape_rule, tf.boolean_mask(names, ~fits)])]):
            # Scoring waits for the check, so a bad request fails with its message.
            items = {f.name: tf.identity(inputs[n])                         # [U, N]
                     for f, n in zip(candidates, candidate_names)}
            users = {n: tf.identity(inputs[n]) for n in context_names}      # [U, *shape]
        return {OUTPUT_KEY: candidate_scoring.score_candidates(model, users, items,
                                                               compiled=xla)}

    def from_examples(examples):
        return {OUTPUT_KEY: model(tf.io.parse_example(examples, parse_spec), training=False)}

    return {
        SERVING_DEFAULT: (serving_default, row_specs(schema)),
        SCORE_CANDIDATES: (score_candidates, score_candidates_specs(schema)),
        FROM_EXAMPLES: (from_examples, examples_spec()),
    }


def build_archive(model: CTRModel, schema: S.Schema, xla: bool = True
                  ) -> keras.export.ExportArchive:
    """An ExportArchive with the three signatures; `xla` as in `export` (the default: the
    export's default, so every caller exports what `python -m qrec_tf.export` does).

    The model itself is not tracked: ExportArchive then saves exactly the variables the endpoint
    functions read, which leaves out the training-only ones. The lookup layers the model uses are
    tracked for their hash tables (the vocabularies), which are resources, not variables.
    """
    archive = keras.export.ExportArchive()
    for lookup in model.lookups.values():
        # Every table is tracked: score_candidates' XLA path (compiled=True) looks up
        # every context feature before the compiled part, also those the model never reads (din:
        # the queries). The lookup layer of such a feature was never called, so it is not built
        # and ExportArchive refuses the layer: its table, a plain resource, is tracked instead.
        archive.track(lookup if lookup.built else lookup.lookup_table)
    for name, (fn, spec) in serving_functions(model, schema, xla).items():
        archive.add_endpoint(name, fn, input_signature=[spec])
    return archive


# --- versions ------------------------------------------------------------------------------------
def existing_versions(base_path: str) -> list[int]:
    """Numbered version directories under a TF Serving base path, ascending."""
    if not os.path.isdir(base_path):
        return []
    return sorted(parse_version(name) for name in os.listdir(base_path)
                  if parse_version(name) is not None
                  and os.path.isdir(os.path.join(base_path, name)))


def next_version(base_path: str) -> int:
    """One more than the largest number taken under `base_path` (a stray file named like a version
    takes its number too: the new version must not collide with it)."""
    if not os.path.isdir(base_path):
        return 1
    taken = [v for v in map(parse_version, os.listdir(base_path)) if v is not None]
    return check_version(max(taken) + 1 if taken else 1)


# --- sample requests: verification and TF Serving warmup ----------------------------------------
def sample_rows(data_dir: DataDirectory | str, schema: S.Schema, split: str = "test",
                rows: int = 64) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Up to `rows` examples of a split: (model features {name: [B, *shape]}, serialized [B])."""
    files = data.shard_files(DataDirectory.of(data_dir).path, split)
    serialized = np.array([r.numpy() for r in tf.data.TFRecordDataset(
        files, compression_type=S.COMPRESSION).take(rows)], dtype=object)
    parsed = data.parse_examples(tf.constant(serialized, tf.string), schema,
                                 example_parse_names(schema))
    return {k: v.numpy() for k, v in parsed.items()}, serialized


def candidate_request(rows: Mapping[str, np.ndarray], schema: S.Schema, user_row: int = 0
                      ) -> dict[str, np.ndarray]:
    """score_candidates inputs for one user (the context of `user_row`) x every row's item."""
    request = {f.name: rows[f.name][user_row:user_row + 1] for f in context_features(schema)}
    for f in candidate_features(schema):
        request[candidate_input_name(f.name)] = rows[f.name][None, :]
    return request


def candidate_rows(rows: Mapping[str, np.ndarray], schema: S.Schema, user_row: int = 0
                   ) -> dict[str, np.ndarray]:
    """The serving_default rows equivalent to `candidate_request`: the context repeated."""
    n = len(rows[S.ITEM_ID])
    out = {f.name: np.repeat(rows[f.name][user_row:user_row + 1], n, axis=0)
           for f in context_features(schema)}
    out.update({f.name: rows[f.name] for f in candidate_features(schema)})
    return out


def verify(export_path: str, model: CTRModel, schema: S.Schema,
           rows: Mapping[str, np.ndarray], serialized: np.ndarray) -> float:
    """Reloads the export and checks every signature against the in-memory model; returns the
    largest absolute difference, or raises when it passes TOLERANCE."""
    loaded = tf.saved_model.load(export_path)
    tensors = {k: tf.constant(v) for k, v in rows.items()}
    expected = model(tensors, training=False).numpy()
    expected_candidates = model({k: tf.constant(v) for k, v in
                                 candidate_rows(rows, schema).items()}, training=False).numpy()
    got = {
        SERVING_DEFAULT: (loaded.signatures[SERVING_DEFAULT](**tensors)[OUTPUT_KEY], expected),
        FROM_EXAMPLES: (loaded.signatures[FROM_EXAMPLES](
            **{EXAMPLES_KEY: tf.constant(serialized, tf.string)})[OUTPUT_KEY], expected),
        SCORE_CANDIDATES: (loaded.signatures[SCORE_CANDIDATES](
            **{k: tf.constant(v) for k, v in candidate_request(rows, schema).items()}
        )[OUTPUT_KEY][0], expected_candidates),
    }
    worst = 0.0
    for name, (scores, want) in got.items():
        diff = float(np.max(np.abs(scores.numpy() - want)))
        if not diff <= TOLERANCE:
            raise RuntimeError(f"exported signature {name} differs from the trained model by "
                               f"{diff:.3g} (tolerance {TOLERANCE})")
        worst = max(worst, diff)
    return worst


def warmup_candidate_counts(max_candidates: int = WARMUP_MAX_CANDIDATES) -> list[int]:
    """One candidate count per bucket that a request of 1..max_candidates falls in: the
    buckets themselves, ascending."""
    return sorted({candidate_bucket(n) for n in range(1, max_candidates + 1)})


def tiled_candidate_request(rows: Mapping[str, np.ndarray], schema: S.Schema, n: int
                            ) -> dict[str, np.ndarray]:
    """candidate_request with `n` candidates: the rows' items repeated as needed."""
    take = np.arange(n) % len(rows[S.ITEM_ID])
    return candidate_request({k: v[take] for k, v in rows.items()}, schema)


def write_warmup(export_path: str, model_name: str, schema: S.Schema,
                 rows: Mapping[str, np.ndarray], serialized: np.ndarray,
                 max_candidates: int = WARMUP_MAX_CANDIDATES) -> int:
    """TF Serving's warmup file (a TFRecord of PredictionLog), replayed by the server when it
    loads the version so that no first request pays a compilation: one request each for
    serving_default and from_examples, and one score_candidates request (one user) per candidate
    bucket up to `max_candidates` (warmup_candidate_counts). Returns the number of requests."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    one = {k: v[:1] for k, v in rows.items()}
    inputs = [(SERVING_DEFAULT, one), (FROM_EXAMPLES, {EXAMPLES_KEY: serialized[:1]})]
    inputs += [(SCORE_CANDIDATES, tiled_candidate_request(rows, schema, n))
               for n in warmup_candidate_counts(max_candidates)]
    path = os.path.join(export_path, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, tensors in inputs:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            for name, value in tensors.items():
                dtype = tf.string if value.dtype == object else None
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(inputs)


# --- the export --------------------------------------------------------------------------------
# (It lives in model_layout, which the augment stage may import; the name stays here.)
resolve_data_dir = model_layout.resolve_data_dir


def export(model_dir: str, output: str, data_dir: DataDirectory | str | None = None,
           version: int | None = None, verify_split: str = "test", xla: bool = True,
           warmup_max_candidates: int = WARMUP_MAX_CANDIDATES) -> str:
    """Exports the trained model in `model_dir` to `<output>/<version>`; returns that path.

    Args:
      model_dir: the --model-dir of a finished `python -m qrec_tf.train` run.
      output: the model's TF Serving base path, e.g. export/queryrec.
      data_dir: the Beam job's output (vocabularies, and the examples the export is checked on);
        default: the one recorded in <model_dir>/run.json.
      version: a version number; default: the largest existing one + 1. An existing version is
        never overwritten.
      verify_split: the split whose first examples check the export against the trained model.
      xla: `score_candidates` runs everything after the vocabulary lookups as one XLA
        computation (candidate_scoring.score_candidates(compiled=True); TF Serving then needs
        --xla_cpu_compilation_enabled=true). serving_default and from_examples never use XLA.
      warmup_max_candidates: the warmup file covers every candidate bucket up to this many
        candidates (write_warmup).
    """
    data_dir = DataDirectory.of(resolve_data_dir(model_dir, data_dir))   # loaded once
    if warmup_max_candidates < 1:
        raise ValueError(f"--warmup-max-candidates must be >= 1, got {warmup_max_candidates}")
    if version is not None:
        check_version(version)  # TF Serving's int64 versions: a larger one would not be served
    if os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"--output {output!r} exists and is not a directory")
    if version is not None and os.path.exists(os.path.join(output, str(version))):
        raise FileExistsError(f"{os.path.join(output, str(version))} exists; versions are never "
                              "overwritten")
    _, model = load_trained_model(model_dir, data_dir)
    try:   # a model that scores NaN is never served
        check_finite_weights(model, f"{model_layout.weights_path(model_dir)} is not exported")
    except TrainingDiverged as error:
        raise ValueError(str(error)) from None
    schema = model.schema
    model_name = os.path.basename(os.path.normpath(output))
    os.makedirs(output, exist_ok=True)
    rows, serialized = sample_rows(data_dir, schema, verify_split)

    remove_stale_staging(output)
    # A hidden, non-numeric name: TF Serving and serving.local_server ignore it.
    with staging_directory(output) as staging:
        started = time.perf_counter()
        build_archive(model, schema, xla).write_out(staging, verbose=False)
        write_warmup(staging, model_name, schema, rows, serialized, warmup_max_candidates)
        difference = verify(staging, model, schema, rows, serialized)
        LOG.info("exported and checked in %.1f s: %d examples, largest difference %.2g",
                 time.perf_counter() - started, len(serialized), difference)
        os.chmod(staging, 0o755)  # mkdtemp makes it private; a server may run as another user
        for _ in range(100):  # retried only when a concurrent export takes the number first
            target = os.path.join(output, str(version or next_version(output)))
            if os.path.exists(target) and version is not None:
                raise FileExistsError(f"{target} exists; versions are never overwritten")
            try:
                # Atomic, and refused when the target exists (unless it is an empty directory).
                os.rename(staging, target)
                return target
            except OSError:
                if version is not None or not os.path.exists(target):
                    raise
        raise RuntimeError(f"could not claim a version number under {output}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qrec_tf.export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True,
                        help="the --model-dir of a finished `python -m qrec_tf.train` run")
    parser.add_argument("--output", required=True,
                        help="the TF Serving base path, e.g. export/queryrec; a new numbered "
                             "version directory is written under it")
    parser.add_argument("--data", help="output directory of the Beam job (default: the data_dir "
                                       "recorded in <model-dir>/run.json)")
    parser.add_argument("--version", type=int,
                        help="version number (default: the largest existing version + 1)")
    parser.add_argument("--no-xla", dest="xla", action="store_false",
                        help="score_candidates without XLA (for a TF Serving that cannot run "
                             "--xla_cpu_compilation_enabled=true; about 1.5x slower on CPU)")
    parser.add_argument("--warmup-max-candidates", type=int, default=WARMUP_MAX_CANDIDATES,
                        help="the warmup requests compile score_candidates for every candidate "
                             "bucket up to this many candidates (default "
                             f"{WARMUP_MAX_CANDIDATES}: {len(warmup_candidate_counts())} buckets)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        path = export(args.model_dir, args.output, args.data, args.version, xla=args.xla,
                      warmup_max_candidates=args.warmup_max_candidates)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        parser.error(str(error))
    except OSError as error:  # e.g. a full disk: nothing was published
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    print(f"exported {', '.join(SIGNATURES)} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
