"""pipelines.score: a split, or a CSV of users and candidate items, scored on Beam through
RunInference (Beam's TensorFlow model handler) equals what the server answers for the same rows
(from_examples and score_candidates over gRPC), on the local runner and on the portable path."""

import collections
import glob
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipelines import local_cluster, score
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
                           timeout=600) as client:
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


def split_examples(data_dir: str, split: str = "test") -> list[tf.train.Example]:
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(
        data.shard_files(data_dir, split), compression_type=S.COMPRESSION)]


def int_feature(example: tf.train.Example, name: str) -> int:
    return example.features.feature[name].int64_list.value[0]


def candidates_case(tiny, tmp_path):
    """A candidates CSV over the tiny test split: 3 users x 5 items (each user's context its
    latest example, the documented rule, found here without Beam), an unknown user, an unknown
    item and a malformed line. Returns (csv path, {user: (context example, [items])},
    {item: item-feature example}, the expected unscored lines)."""
    examples = split_examples(tiny.data_dir)
    latest: dict[int, tf.train.Example] = {}
    for example in examples:
        user = int_feature(example, S.USER_ID)
        key = (int_feature(example, S.TIMESTAMP), example.SerializeToString(deterministic=True))
        old = latest.get(user)
        if old is None or key > (int_feature(old, S.TIMESTAMP),
                                 old.SerializeToString(deterministic=True)):
            latest[user] = example
    schema = S.Schema.load(tiny.data_dir)
    item_names = [f.name for f in schema.group("item")]
    items: dict[int, tf.train.Example] = {}
    for example in examples:
        features = tf.train.Example()
        for name in item_names:
            features.features.feature[name].CopyFrom(example.features.feature[name])
        item = int_feature(example, S.ITEM_ID)
        if item not in items or (features.SerializeToString(deterministic=True)
                                 < items[item].SerializeToString(deterministic=True)):
            items[item] = features
    users = sorted(latest)[:3]
    pool = sorted(items)
    wanted = {user: (latest[user], pool[i * 5:i * 5 + 5]) for i, user in enumerate(users)}
    unknown_user, unknown_item = max(latest) + 1000, max(items) + 1000
    lines = ["user_id,item_ids"]
    lines += [f'{user},"{" ".join(map(str, chosen))}"' for user, (_, chosen) in wanted.items()]
    lines += [f"{unknown_user},{pool[0]}", f"{users[0]},{unknown_item}", "abc,1 2"]
    path = tmp_path / "candidates.csv"
    path.write_text("\n".join(lines) + "\n")
    unscored = {f"{unknown_user},{pool[0]},{score.NO_USER}",
                f"{users[0]},{unknown_item},{score.NO_ITEM}",
                f',,"{score.MALFORMED}: abc,1 2"'}
    return path, wanted, items, unscored


def read_lines(pattern: str, header: str) -> set[str]:
    lines = set()
    for path in sorted(glob.glob(pattern)):
        with open(path) as f:
            text = f.read().splitlines()
        assert text[0] == header
        lines.update(text[1:])
    return lines


def server_scores(tiny, wanted, items) -> dict[tuple[int, int], list[float]]:
    """What the server's score_candidates answers for each user's context and candidates."""
    schema = S.Schema.load(tiny.data_dir)
    context_names = [f.name for f in schema.model_features if f.group != "item"]
    item_names = [f.name for f in schema.group("item")]
    spec = schema.parse_spec(context_names + item_names)
    expected = {}
    with LocalServer(MODEL_NAME, tiny.base_path, rest_api_port=None, grpc_port=0) as server:
        with ServingClient(f"127.0.0.1:{server.grpc_port}", MODEL_NAME, "grpc",
                           timeout=600) as client:
            for user, (example, chosen) in wanted.items():
                parsed = tf.io.parse_single_example(example.SerializeToString(), spec)
                context = {name: parsed[name].numpy() for name in context_names}
                candidates = {name: [int_feature(items[i], name) for i in chosen]
                              for name in item_names}
                served = client.score_candidates(context, candidates)
                expected.update({(user, i): [float(s)] for i, s in zip(chosen, served)})
    return expected


def check_candidate_scores(prefix: str, expected: dict, unscored: set[str]) -> None:
    beam_scores = read_scores(prefix)
    assert read_lines(prefix + "_unscored-*.csv", score.UNSCORED_HEADER) == unscored
    assert len(expected) == 15
    assert beam_scores.keys() == expected.keys()
    for key, values in expected.items():
        # from_examples (Beam) against score_candidates' XLA graph (the server): float32 sums
        # in another order.
        np.testing.assert_allclose(beam_scores[key], values, atol=1e-5)


def test_candidates_csv_scores_equal_the_servers_score_candidates(tmp_path_factory, tmp_path):
    tiny = tiny_model(tmp_path_factory)
    path, wanted, items, unscored = candidates_case(tiny, tmp_path)
    prefix = str(tmp_path / "scores" / "candidates")
    assert score.main(["--model", tiny.base_path, "--input", str(path), "--data",
                       tiny.data_dir, "--output", prefix]) == 0
    check_candidate_scores(prefix, server_scores(tiny, wanted, items), unscored)


@pytest.mark.slow
def test_both_inputs_score_as_the_server_on_the_portable_path(tmp_path_factory, tmp_path):
    """Beam's portability framework (pipelines.local_cluster: a job service and SDK worker
    processes, the path of Dataflow / Flink / Spark): the handler is pickled to the workers,
    which load the model themselves."""
    tiny = tiny_model(tmp_path_factory)
    path, wanted, items, unscored = candidates_case(tiny, tmp_path)
    candidates, examples = str(tmp_path / "portable" / "cand"), str(tmp_path / "portable" / "ex")
    direct = str(tmp_path / "direct" / "ex")
    assert score.main(["--model", tiny.base_path, "--input", tiny.data_dir,
                       "--output", direct]) == 0
    job = [sys.executable, "-m", "pipelines.score", "--model", tiny.base_path]
    with local_cluster.local_cluster() as cluster:
        assert cluster.run([*job, "--input", str(path), "--data", tiny.data_dir,
                            "--output", candidates], timeout_s=900) == 0
        assert cluster.run([*job, "--input", tiny.data_dir, "--output", examples],
                           timeout_s=900) == 0
        cluster.check()
    check_candidate_scores(candidates, server_scores(tiny, wanted, items), unscored)
    portable, local = read_scores(examples), read_scores(direct)
    assert portable.keys() == local.keys() and len(portable) > 0
    for key, values in local.items():
        np.testing.assert_allclose(sorted(portable[key]), sorted(values), atol=1e-6)


def test_a_candidates_csv_needs_data_and_its_header(tmp_path_factory, tmp_path, capsys):
    tiny = tiny_model(tmp_path_factory)
    path = tmp_path / "c.csv"
    path.write_text("user,items\n1,2\n")
    base = ["--model", tiny.base_path, "--input", str(path), "--output", str(tmp_path / "o")]
    assert score.main(base) == 2
    assert "a CSV --input needs --data" in capsys.readouterr().err
    assert score.main([*base, "--data", tiny.data_dir]) == 2
    assert "the first line must be the header 'user_id,item_ids'" in capsys.readouterr().err
    path.write_text("user_id,item_ids\n1,2\n")
    assert score.main([*base, "--data", str(tmp_path)]) == 2
    assert "no TFRecord files match" in capsys.readouterr().err
