"""Batch scoring on Beam: a split's examples, or a CSV of (user, candidate items), scored with an
exported SavedModel through Beam's RunInference, written as CSV lines `user_id,item_id,score`.

    python -m pipelines.score --model export/queryrec[/<version>] --input DATA_DIR \
        [--split test] --output scores/test [Beam options, e.g. --runner=PortableRunner ...]
    python -m pipelines.score --model export/queryrec --input candidates.csv --data DATA_DIR \
        [--split test] --output scores/candidates [Beam options]

--model is a version directory or a TF Serving base path (its newest version).

Examples: --input is the Beam job's output (pipelines.build_tfrecords; its `<split>/` TFRecord
shards are read) or a TFRecord file pattern; every example is scored.

Candidates: --input is a CSV file (or pattern) with the header `user_id,item_ids` and one line per
user: the user's id and its candidate item ids separated by spaces, e.g. `17,"3 8 12"` (quotes
optional). The features come from --data's --split (the Beam job's output): the user's context
(profile, history, queries and the request time) is that of its latest example in the split (the
largest timestamp; among equal ones the largest serialized example), and each candidate's item
features (author, category, subcategory) those of an example of that item in the split (the
smallest serialized item features, so that the choice does not depend on the runner). A user or
an item with no example in the split is not scored: such pairs, and malformed lines, are written
to `<output>_unscored-SSSSS-of-NNNNN.csv` (`user_id,item_id,reason`).

Each (user, item) row is a tf.Example sent to the export's `from_examples` signature, the same
graph that TF Serving and serving.local_server run, so the scores equal the server's for the same
rows (tests/pipelines/test_score.py: against score_candidates and from_examples).

The model is loaded once per worker by RunInference (Beam's shared model manager) through Beam's
TensorFlow handler, `apache_beam.ml.inference.tensorflow_inference.TFModelHandlerTensor`
(it needs tensorflow_hub: `pip install -e '.[score]'`, part of `.[dev]`), with two things set:
its inference_fn calls the signature on the batch of serialized examples, and its load_model
is `tf.saved_model.load`. Beam's own load_model is `tf.keras.models.load_model(hub.resolve(uri))`,
and Keras 3 (tf.keras here) refuses a SavedModel directory ("File format not supported ... use
keras.layers.TFSMLayer"); this export is not a Keras model anyway (only the serving signatures).
Batching (min/max batch size) is RunInference's.
"""

from __future__ import annotations

import argparse
import csv
import functools
import glob
import io
import os
import sys
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.beam_support import BEAM_EPILOG, InputError, configure_logging, with_local_defaults
from qrec_tf import schema as S

FROM_EXAMPLES, EXAMPLES_KEY, OUTPUT_KEY = "from_examples", "examples", "ctr"
HEADER = "user_id,item_id,score"
CSV_HEADER = ("user_id", "item_ids")
UNSCORED_HEADER = "user_id,item_id,reason"
NO_USER, NO_ITEM, MALFORMED = "user not in split", "item not in split", "malformed line"
# The item-side features a candidate brings (schema group "item", as export.candidate_features).
ITEM_GROUP = "item"


def call_signature(signature: str, model: Any, batch: Sequence[bytes],
                   inference_args: dict | None = None, model_id: str | None = None
                   ) -> Iterable[PredictionResult]:
    """TFModelHandlerTensor's inference_fn: one call of `signature` on the whole batch."""
    import tensorflow as tf
    scores = model.signatures[signature](
        **{EXAMPLES_KEY: tf.constant(list(batch), tf.string)})[OUTPUT_KEY].numpy()
    return [PredictionResult(example, float(score), model_id)
            for example, score in zip(batch, scores)]


def model_handler(model_uri: str, signature: str = FROM_EXAMPLES, min_batch_size: int = 64,
                  max_batch_size: int = 1024):
    """Beam's TFModelHandlerTensor for one signature of the SavedModel at `model_uri` (its
    elements are serialized tf.Example records)."""
    try:
        from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerTensor
    except ImportError as error:  # tensorflow_inference imports tensorflow_hub
        raise InputError(f"Beam's TensorFlow model handler cannot be imported ({error}): "
                         "pip install -e '.[score]'") from None

    class SignatureHandler(TFModelHandlerTensor):
        def load_model(self):
            import tensorflow as tf
            loaded = tf.saved_model.load(self._model_uri)
            if signature not in loaded.signatures:
                raise ValueError(f"{self._model_uri} has no signature {signature!r}")
            return loaded  # the signature is looked up per batch: it must not outlive loaded

        def get_num_bytes(self, batch: Sequence[bytes]) -> int:
            return sum(len(example) for example in batch)

    # A class defined here pickles by value (Beam's cloudpickle), so a worker needs no import
    # path for it; the inference_fn is a module function.
    return SignatureHandler(model_uri, inference_fn=functools.partial(call_signature, signature),
                            min_batch_size=min_batch_size, max_batch_size=max_batch_size)


def example_ids(serialized: bytes) -> tuple[int, int]:
    from tensorflow.core.example import example_pb2
    feature = example_pb2.Example.FromString(serialized).features.feature
    return feature[S.USER_ID].int64_list.value[0], feature[S.ITEM_ID].int64_list.value[0]


def csv_line(result: PredictionResult) -> str:
    """A scored example -> `user_id,item_id,score` (the ids read from the example itself)."""
    user, item = example_ids(result.example)
    return f"{user},{item},{result.inference:.9g}"  # 9 digits: a float32 exactly


# --- candidates from a CSV ---------------------------------------------------------------------
def parse_candidates(line: str) -> Iterable[tuple[int, int] | tuple[str, str]]:
    """A CSV line `user_id,item_ids` -> (user, item) pairs; a malformed line -> one
    ("bad", line) element for the unscored output."""
    fields = next(csv.reader([line]), [])
    try:
        if len(fields) != 2 or not fields[1].split():
            raise ValueError
        user, items = int(fields[0]), [int(i) for i in fields[1].split()]
    except ValueError:
        yield "bad", line
        return
    for item in items:
        yield user, item


def unscored_line(user, item, reason: str) -> str:
    """One line of the unscored output (CSV-quoted: a malformed line may hold commas)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow([user, item, reason])
    return out.getvalue()


def user_context(serialized: bytes) -> tuple[int, tuple[int, bytes]]:
    """An example -> (user, (timestamp, example)): the latest is the user's context."""
    from tensorflow.core.example import example_pb2
    feature = example_pb2.Example.FromString(serialized).features.feature
    return (feature[S.USER_ID].int64_list.value[0],
            (feature[S.TIMESTAMP].int64_list.value[0], serialized))


def item_features(serialized: bytes, names: Sequence[str]) -> tuple[int, bytes]:
    """An example -> (item, an Example holding only its item features, serialized)."""
    from tensorflow.core.example import example_pb2
    example = example_pb2.Example.FromString(serialized)
    item = example_pb2.Example()
    for name in names:
        item.features.feature[name].CopyFrom(example.features.feature[name])
    return (example.features.feature[S.ITEM_ID].int64_list.value[0],
            item.SerializeToString(deterministic=True))


def join_users(element) -> Iterable:
    """(user, {pairs: [items], context: [(ts, example)]}) -> (item, (user, context example)), or
    ("unscored", line) when the split has no example of the user."""
    user, grouped = element
    contexts = list(grouped["context"])
    for item in grouped["pairs"]:
        if contexts:
            yield item, (user, contexts[0][1])
        else:
            yield beam.pvalue.TaggedOutput("unscored", unscored_line(user, item, NO_USER))


def join_items(element) -> Iterable:
    """(item, {wants: [(user, context)], item: [features]}) -> the candidate's example: the
    user's context example with its item features replaced by this item's."""
    from tensorflow.core.example import example_pb2
    item, grouped = element
    features = list(grouped["item"])
    for user, context in grouped["wants"]:
        if not features:
            yield beam.pvalue.TaggedOutput("unscored", unscored_line(user, item, NO_ITEM))
            continue
        example = example_pb2.Example.FromString(context)
        for name, value in example_pb2.Example.FromString(
                features[0]).features.feature.items():
            example.features.feature[name].CopyFrom(value)
        yield example.SerializeToString(deterministic=True)


def candidate_examples(pipeline: beam.Pipeline, csv_pattern: str, pattern: str,
                       schema: S.Schema) -> tuple[beam.PCollection, beam.PCollection]:
    """(the serialized examples to score, the unscored lines) of a candidates CSV."""
    names = [f.name for f in schema.group(ITEM_GROUP)]
    examples = pipeline | "ReadSplit" >> beam.io.ReadFromTFRecord(
        pattern, compression_type=CompressionTypes.AUTO)
    contexts = (examples | "UserKey" >> beam.Map(user_context)
                | "Latest" >> beam.CombinePerKey(max))
    items = (examples | "ItemKey" >> beam.Map(item_features, names)
             | "OnePerItem" >> beam.CombinePerKey(min))
    parsed = (pipeline | "ReadCsv" >> beam.io.ReadFromText(csv_pattern, skip_header_lines=1)
              | "Parse" >> beam.FlatMap(parse_candidates))
    pairs = parsed | "Pairs" >> beam.Filter(lambda kv: kv[0] != "bad")
    malformed = (parsed | "Bad" >> beam.Filter(lambda kv: kv[0] == "bad")
                 | "BadLine" >> beam.Map(lambda kv: unscored_line("", "", f"{MALFORMED}: {kv[1]}")))
    by_user = ({"pairs": pairs, "context": contexts} | "ByUser" >> beam.CoGroupByKey()
               | "JoinUser" >> beam.FlatMap(join_users).with_outputs("unscored", main="wants"))
    by_item = ({"wants": by_user.wants, "item": items} | "ByItem" >> beam.CoGroupByKey()
               | "JoinItem" >> beam.FlatMap(join_items).with_outputs("unscored", main="rows"))
    unscored = ((malformed, by_user.unscored, by_item.unscored)
                | "Unscored" >> beam.Flatten())
    return by_item.rows, unscored


def check_csv(pattern: str) -> str:
    """The CSV's files exist and each starts with the header; returns the pattern."""
    files = sorted(glob.glob(pattern))
    if not files:
        raise InputError(f"no CSV file matches --input {pattern!r}")
    for path in files:
        with open(path, newline="") as f:
            header = tuple(h.strip() for h in next(csv.reader(f), []))
        if header != CSV_HEADER:
            raise InputError(f"{path}: the first line must be the header "
                             f"{','.join(CSV_HEADER)!r}, got {','.join(header)!r}")
    return pattern


# --- the job -------------------------------------------------------------------------------------
def resolve_model(path: str) -> str:
    """A version directory, or a base path's newest version."""
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    # TF Serving's version names (qrec_tf.version_names; pipelines import only qrec_tf.schema)
    names = os.listdir(path) if os.path.isdir(path) else []
    versions = sorted(int(n) for n in names if n.isascii() and n.isdigit()
                      and int(n) < 2 ** 63
                      and os.path.exists(os.path.join(path, n, "saved_model.pb")))
    if not versions:
        raise InputError(f"--model {path!r} is neither a SavedModel version directory nor a base "
                         "path with numbered versions (python -m qrec_tf.export --output)")
    return os.path.join(path, str(versions[-1]))


def resolve_input(path: str, split: str) -> str:
    """The Beam job's output directory + split -> its shard pattern; a pattern stays."""
    if os.path.isdir(path):
        if split not in S.EXAMPLE_SPLITS:
            raise InputError(f"--split must be one of {S.EXAMPLE_SPLITS}, got {split!r}")
        pattern = os.path.join(path, split, S.EXAMPLE_FILE_PATTERN)
    else:
        pattern = path
    if not glob.glob(pattern):
        raise InputError(f"no TFRecord files match {pattern!r} (--input is the --output of "
                         "`python -m pipelines.build_tfrecords`, or a file pattern)")
    return pattern


def build(pipeline: beam.Pipeline, model: str, pattern: str, output: str,
          csv_pattern: str | None = None, schema: S.Schema | None = None) -> None:
    if csv_pattern is None:
        rows = pipeline | "Read" >> beam.io.ReadFromTFRecord(
            pattern, compression_type=CompressionTypes.AUTO)
    else:
        rows, unscored = candidate_examples(pipeline, csv_pattern, pattern, schema)
        _ = unscored | "WriteUnscored" >> beam.io.WriteToText(
            output + "_unscored", file_name_suffix=".csv", header=UNSCORED_HEADER)
    (rows
     | "Score" >> RunInference(model_handler(model))
     | "Format" >> beam.Map(csv_line)
     | "Write" >> beam.io.WriteToText(output, file_name_suffix=".csv", header=HEADER))


def is_csv(path: str) -> bool:
    return path.endswith(".csv") or (os.path.isfile(path) and not path.endswith(".gz")
                                     and _first_line(path).startswith("user_id,"))


def _first_line(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.readline()


def run(argv: list[str]) -> str:
    """Runs the job; returns the output prefix."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.score",
                                     description=__doc__.split("\n\n")[0], epilog=BEAM_EPILOG)
    parser.add_argument("--model", required=True,
                        help="an export's version directory or its base path (newest version)")
    parser.add_argument("--input", required=True,
                        help="the Beam job's output directory, a TFRecord file pattern, or a "
                             "CSV of user_id,item_ids (with --data)")
    parser.add_argument("--data", help="with a CSV --input: the Beam job's output whose --split "
                                       "gives the users' context and the items' features")
    parser.add_argument("--split", default="test", help="the split read (default test)")
    parser.add_argument("--output", required=True,
                        help="output prefix: <output>-SSSSS-of-NNNNN.csv")
    args, beam_args = parser.parse_known_args(argv)
    model = resolve_model(args.model)
    csv_pattern = schema = None
    if is_csv(args.input):
        if not args.data:
            raise InputError("a CSV --input needs --data: the Beam job's output whose split "
                             "holds the users' and items' features")
        csv_pattern = check_csv(args.input)
        pattern = resolve_input(args.data, args.split)
        try:
            schema = S.Schema.load(args.data)
        except FileNotFoundError as error:
            raise InputError(f"--data: {error}") from None
    else:
        if args.data:
            raise InputError("--data goes with a CSV --input (a TFRecord --input is scored as "
                             "it is)")
        pattern = resolve_input(args.input, args.split)
    model_handler(model)  # a missing tensorflow_hub is a one-line error before the job starts
    options = PipelineOptions(with_local_defaults(beam_args))
    with beam.Pipeline(options=options) as pipeline:
        build(pipeline, model, pattern, args.output, csv_pattern, schema)
    return args.output


def main(argv=None) -> int:
    configure_logging()
    try:
        run(sys.argv[1:] if argv is None else argv)
    except InputError as error:
        print(f"python -m pipelines.score: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
