"""pipelines.score: a split scored on Beam through RunInference equals what the server answers
for the same examples (the served from_examples signature over gRPC)."""

import collections
import glob

import numpy as np
import pytest
import tensorflow as tf

from pipelines import score
from qrec_tf import data
from qrec_tf import schema as S
from serving.client import ServingClient
from serving.local_server import LocalServer
from tests.serving.tiny_model import MODEL_NAME, tiny_model


def read_scores(prefix: str) -> dict[tuple[int, int], list[float]]:
    out = collections.defaultdict(list)
    files = sorted(glob.glob(prefix + "-*.csv"))
    assert files
    for path in files:
        with open(path) as f:
            lines = f.read().splitlines()
        assert lines[0] == score.HEADER
        for line in lines[1:]:
            user, item, value = line.split(",")
            out[int(user), int(item)].append(float(value))
    return out


def test_beam_scores_equal_the_servers(tmp_path_factory, tmp_path):
    tiny = tiny_model(tmp_path_factory)
    prefix = str(tmp_path / "scores" / "test")
    assert score.main(["--model", tiny.base_path, "--input", tiny.data_dir, "--split", "test",
                       "--output", prefix]) == 0
    beam_scores = read_scores(prefix)

    serialized = [r.numpy() for r in tf.data.TFRecordDataset(
        data.shard_files(tiny.data_dir, "test"), compression_type=S.COMPRESSION)]
    with LocalServer(MODEL_NAME, tiny.base_path, rest_api_port=None, grpc_port=0) as server:
        with ServingClient(f"127.0.0.1:{server.grpc_port}", MODEL_NAME, "grpc",
                           timeout=120) as client:
            served = client.predict({"examples": serialized}, "from_examples")["ctr"]
    server_scores = collections.defaultdict(list)
    for record, value in zip(serialized, served):
        feature = tf.train.Example.FromString(record).features.feature
        key = (feature[S.USER_ID].int64_list.value[0], feature[S.ITEM_ID].int64_list.value[0])
        server_scores[key].append(float(value))
    assert sum(map(len, beam_scores.values())) == len(serialized) > 0
    assert beam_scores.keys() == server_scores.keys()
    for key, values in server_scores.items():
        np.testing.assert_allclose(sorted(beam_scores[key]), sorted(values), atol=1e-6)


def test_a_wrong_model_or_input_is_a_one_line_error(tmp_path, capsys):
    assert score.main(["--model", str(tmp_path), "--input", str(tmp_path), "--output",
                       str(tmp_path / "o")]) == 2
    assert "neither a SavedModel" in capsys.readouterr().err
    with pytest.raises(score.InputError, match="no TFRecord files"):
        score.resolve_input(str(tmp_path / "none-*.gz"), "test")
