"""Batch scoring on Beam: a split's examples scored with an exported SavedModel through Beam's
RunInference, written as CSV lines `user_id,item_id,score`.

    python -m pipelines.score --model export/queryrec[/<version>] --input DATA_DIR \
        [--split test] --output scores/test [Beam options, e.g. --runner=PortableRunner ...]

--input is the Beam job's output (pipelines.build_tfrecords; its `<split>/` TFRecord shards are
read) or a TFRecord file pattern. --model is a version directory or a TF Serving base path (its
newest version). The examples go to the export's `from_examples` signature, the same graph that
TF Serving and serving.local_server run, so the scores equal the server's for the same rows.

The model is loaded once per worker by RunInference (Beam's shared model manager) through
`SavedModelHandler`, a ModelHandler for TensorFlow SavedModel signatures. Beam's own
`TFModelHandlerTensor` loads with `tf.keras.models.load_model` (and needs tensorflow_hub), which
Keras 3 refuses for a SavedModel that is not a Keras model, as this export is (it has only the
serving signatures, not the Keras model); the handler here calls the signature instead and
otherwise leaves batching (min/max batch size) to RunInference.

Not done: a CSV input of (user, candidate items); score a split, or write the candidates as
examples first.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.beam_support import BEAM_EPILOG, InputError, configure_logging, with_local_defaults
from qrec_tf import schema as S

FROM_EXAMPLES, EXAMPLES_KEY, OUTPUT_KEY = "from_examples", "examples", "ctr"
HEADER = "user_id,item_id,score"


class SavedModelHandler(ModelHandler[bytes, PredictionResult, Any]):
    """RunInference's handler for one signature of a SavedModel whose input is a batch of
    serialized tf.Example (`from_examples`: `examples` string [B] -> `ctr` float32 [B])."""

    def __init__(self, model_uri: str, signature: str = FROM_EXAMPLES,
                 min_batch_size: int = 64, max_batch_size: int = 1024):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self._model_uri = model_uri
        self._signature = signature

    def load_model(self) -> Any:
        import tensorflow as tf
        loaded = tf.saved_model.load(self._model_uri)
        if self._signature not in loaded.signatures:
            raise ValueError(f"{self._model_uri} has no signature {self._signature!r}")
        return loaded  # the signature is looked up per batch: it must not outlive its object

    def run_inference(self, batch: Sequence[bytes], model: Any,
                      inference_args: dict | None = None) -> Iterable[PredictionResult]:
        import tensorflow as tf
        scores = model.signatures[self._signature](
            **{EXAMPLES_KEY: tf.constant(list(batch), tf.string)})[OUTPUT_KEY].numpy()
        return [PredictionResult(example, float(score)) for example, score in zip(batch, scores)]

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(example) for example in batch)


def csv_line(result: PredictionResult) -> str:
    """A scored example -> `user_id,item_id,score` (the ids read from the example itself)."""
    from tensorflow.core.example import example_pb2
    example = example_pb2.Example.FromString(result.example)
    feature = example.features.feature
    user = feature[S.USER_ID].int64_list.value[0]
    item = feature[S.ITEM_ID].int64_list.value[0]
    return f"{user},{item},{result.inference:.9g}"  # 9 digits: a float32 exactly


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
    import glob
    if not glob.glob(pattern):
        raise InputError(f"no TFRecord files match {pattern!r} (--input is the --output of "
                         "`python -m pipelines.build_tfrecords`, or a file pattern)")
    return pattern


def build(pipeline: beam.Pipeline, model: str, pattern: str, output: str) -> None:
    (pipeline
     | "Read" >> beam.io.ReadFromTFRecord(pattern, compression_type=CompressionTypes.AUTO)
     | "Score" >> RunInference(SavedModelHandler(model))
     | "Format" >> beam.Map(csv_line)
     | "Write" >> beam.io.WriteToText(output, file_name_suffix=".csv", header=HEADER))


def run(argv: list[str]) -> str:
    """Runs the job; returns the output prefix."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.score",
                                     description=__doc__.split("\n\n")[0], epilog=BEAM_EPILOG)
    parser.add_argument("--model", required=True,
                        help="an export's version directory or its base path (newest version)")
    parser.add_argument("--input", required=True,
                        help="the Beam job's output directory, or a TFRecord file pattern")
    parser.add_argument("--split", default="test", help="with a directory --input (default test)")
    parser.add_argument("--output", required=True,
                        help="output prefix: <output>-SSSSS-of-NNNNN.csv")
    args, beam_args = parser.parse_known_args(argv)
    model = resolve_model(args.model)
    pattern = resolve_input(args.input, args.split)
    options = PipelineOptions(with_local_defaults(beam_args))
    with beam.Pipeline(options=options) as pipeline:
        build(pipeline, model, pattern, args.output)
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
