"""The exported SavedModel: signatures named and typed by the schema (as the session loader that TF
Serving uses sees them), scores equal to the trained model's, OOV ids, no training-only parts,
numbered versions written atomically, and the CLI's errors."""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from qrec_tf import data, export
from qrec_tf import schema as S
from qrec_tf.config import load_config, reads_key
from qrec_tf.evaluate import load_trained_model
from qrec_tf.models.registry import MODELS, build_model
from tests.serving.tiny_model import TINY, tiny_model

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
DT = {"int64": "DT_INT64", "string": "DT_STRING"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def model(tiny):
    return load_trained_model(tiny.model_dir, tiny.data_dir)[1]


@pytest.fixture(scope="module")
def loaded(tiny):
    return tf.saved_model.load(tiny.version_dir)


@pytest.fixture(scope="module")
def test_split(tiny, model):
    """The whole test split: (features {name: array}, serialized examples)."""
    return export.sample_rows(tiny.data_dir, model.schema, "test", rows=10_000)


def cli_signatures(text: str) -> dict[str, dict]:
    """`saved_model_cli show --all` -> {signature: {"inputs"/"outputs": {name: (dtype, shape)}}}."""
    signatures = {}
    for block in re.split(r"\nsignature_def\['", text)[1:]:
        name = block[:block.index("'")]
        parts = block.split("contains the following output(s):")
        entry = {}
        for key, part in zip(("inputs", "outputs"), parts):
            entry[key] = {m[0]: (m[1], tuple(int(d) for d in m[2].replace(" ", "").split(",") if d))
                          for m in re.findall(r"\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+"
                                              r"shape: \(([-\d, ]*)\)", part)}
        signatures[name] = entry
    return signatures


def test_saved_model_cli_lists_the_three_signatures_with_the_schemas_names_and_dtypes(tiny, model):
    shown = subprocess.run([SAVED_MODEL_CLI, "show", "--all", "--dir", tiny.version_dir],
                           capture_output=True, text=True, check=True).stdout
    signatures = cli_signatures(shown)
    schema = model.schema
    rows = {f.name: (DT[f.dtype], (-1, *f.shape)) for f in schema.model_features}
    context = {f.name: (DT[f.dtype], (-1, *f.shape)) for f in export.context_features(schema)}
    candidates = {export.candidate_input_name(f.name): (DT[f.dtype], (-1, -1))
                  for f in export.candidate_features(schema)}
    ctr = {export.OUTPUT_KEY: ("DT_FLOAT", (-1,))}
    assert signatures[export.SERVING_DEFAULT] == {"inputs": rows, "outputs": ctr}
    assert signatures[export.SCORE_CANDIDATES] == {
        "inputs": {**context, **candidates},
        "outputs": {export.OUTPUT_KEY: ("DT_FLOAT", (-1, -1))}}
    assert signatures[export.FROM_EXAMPLES] == {
        "inputs": {export.EXAMPLES_KEY: ("DT_STRING", (-1,))}, "outputs": ctr}
    assert "candidate_item_id" in signatures[export.SCORE_CANDIDATES]["inputs"]
    # What a served model must not ask for.
    for name in (S.LABEL, S.NIP_POS_ITEM_IDS, S.NIP_NEG_ITEM_IDS):
        assert all(name not in s["inputs"] for s in signatures.values())
    # The raw times it must ask for: the ages are computed in the graph (issue 30).
    for name in (S.TIMESTAMP, S.QUERY_TIMESTAMPS):
        assert rows[name][0] == "DT_INT64" and name in signatures[export.SCORE_CANDIDATES]["inputs"]


def test_saved_model_cli_run_on_serving_default_gives_the_trained_models_score(
        tiny, model, test_split):
    rows, _ = test_split
    one = {name: value[:1] for name, value in rows.items()}

    def literal(array):
        return repr(np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else v,
                                 otypes=[object])(array).tolist())
    exprs = ";".join(f"{name}={literal(value)}" for name, value in one.items())
    result = subprocess.run([SAVED_MODEL_CLI, "run", "--dir", tiny.version_dir, "--tag_set",
                             "serve", "--signature_def", export.SERVING_DEFAULT,
                             "--input_exprs", exprs], capture_output=True, text=True, check=True)
    printed = result.stdout.split(f"Result for output key {export.OUTPUT_KEY}:")[1]
    scores = np.array([float(v) for v in re.findall(r"[-\d.e]+", printed)])
    expected = model({k: tf.constant(v) for k, v in one.items()}, training=False).numpy()
    assert scores.shape == (1,) and np.isfinite(scores).all()
    np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_every_signature_scores_the_test_split_like_the_trained_model(
        model, loaded, test_split, tiny):
    rows, serialized = test_split
    n = len(serialized)
    assert n == sum(1 for _ in tf.data.TFRecordDataset(
        data.shard_files(tiny.data_dir, "test"), compression_type=S.COMPRESSION))
    expected = model({k: tf.constant(v) for k, v in rows.items()}, training=False).numpy()

    served = loaded.signatures[export.SERVING_DEFAULT](
        **{k: tf.constant(v) for k, v in rows.items()})
    np.testing.assert_allclose(served[export.OUTPUT_KEY].numpy(), expected, atol=1e-5)
    parsed = loaded.signatures[export.FROM_EXAMPLES](examples=tf.constant(serialized, tf.string))
    np.testing.assert_allclose(parsed[export.OUTPUT_KEY].numpy(), expected, atol=1e-5)

    # Three users, each against every item of the split, in one request (U = 3, N = n).
    users = [0, n // 2, n - 1]
    request = {f.name: rows[f.name][users] for f in export.context_features(model.schema)}
    request.update({export.candidate_input_name(f.name): np.tile(rows[f.name], (len(users), 1))
                    for f in export.candidate_features(model.schema)})
    scores = loaded.signatures[export.SCORE_CANDIDATES](
        **{k: tf.constant(v) for k, v in request.items()})[export.OUTPUT_KEY].numpy()
    assert scores.shape == (len(users), n)
    for i, user in enumerate(users):
        want = model({k: tf.constant(v) for k, v in
                      export.candidate_rows(rows, model.schema, user).items()}, training=False)
        np.testing.assert_allclose(scores[i], want.numpy(), atol=1e-5)
    # The user's own row is one of its candidates: the same score as serving_default gave.
    assert scores[0, 0] == pytest.approx(expected[0], abs=1e-5)


def test_unseen_user_item_and_query_ids_score_like_the_trained_model(model, loaded, test_split,
                                                                     tiny):
    rows, _ = test_split
    rows = {k: v[:4].copy() for k, v in rows.items()}
    unseen = 10 ** 12
    rows[S.USER_ID][:] = unseen
    rows[S.ITEM_ID][:] = unseen + 1
    rows[S.AUTHOR_ID][:] = unseen + 2
    rows[S.HIST_ITEM_IDS][:, -1] = unseen + 3
    rows[S.QUERY_KEYS][:, -1] = b"never_seen_query"
    rows[S.QUERY_WORD_IDS][:, -1, :2] = unseen + 4
    for feature, value in ((S.USER_ID, unseen), (S.ITEM_ID, unseen + 1)):
        assert str(value) not in {v for v, _ in S.read_vocab(
            tiny.data_dir, model.schema.feature(feature).vocab)}
    tensors = {k: tf.constant(v) for k, v in rows.items()}
    scores = loaded.signatures[export.SERVING_DEFAULT](**tensors)[export.OUTPUT_KEY].numpy()
    assert scores.shape == (4,) and np.isfinite(scores).all()
    np.testing.assert_allclose(scores, model(tensors, training=False).numpy(), atol=1e-5)
    request = {k: tf.constant(v) for k, v in export.candidate_request(rows, model.schema).items()}
    candidates = loaded.signatures[export.SCORE_CANDIDATES](**request)[export.OUTPUT_KEY].numpy()
    want = model({k: tf.constant(v) for k, v in export.candidate_rows(rows, model.schema).items()},
                 training=False).numpy()
    assert candidates.shape == (1, 4)
    np.testing.assert_allclose(candidates[0], want, atol=1e-5)


def test_score_candidates_names_every_input_whose_shape_does_not_fit(model, loaded, test_split):
    rows, _ = test_split
    request = {k: np.asarray(v) for k, v in export.candidate_request(
        {k: v[:3] for k, v in rows.items()}, model.schema).items()}
    score = loaded.signatures[export.SCORE_CANDIDATES]
    author = export.candidate_input_name(S.AUTHOR_ID)
    category = export.candidate_input_name(S.CATEGORY_ID)
    short = {**request, author: request[author][:, :-1], category: request[category][:, :-1]}
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        score(**{k: tf.constant(v) for k, v in short.items()})
    message = info.value.message
    assert author in message and category in message and "(users, candidates)" in message
    assert export.candidate_input_name(S.ITEM_ID) not in message.split("these do not:")[1]
    two_users = {**request, S.USER_ID: np.repeat(request[S.USER_ID], 2, axis=0)}
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"these do not:.*{S.USER_ID}"):
        score(**{k: tf.constant(v) for k, v in two_users.items()})
    good = score(**{k: tf.constant(v) for k, v in request.items()})[export.OUTPUT_KEY]
    assert good.shape == (1, 3)  # the same function still scores a good request


def saved_model_proto(version_dir: str) -> saved_model_pb2.SavedModel:
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def saved_variable_names(version_dir: str) -> set[str]:
    """The names of the variables the SavedModel stores (its object graph)."""
    nodes = saved_model_proto(version_dir).meta_graphs[0].object_graph_def.nodes
    return {node.variable.name.removesuffix(":0") for node in nodes
            if node.WhichOneof("kind") == "variable"}


def graph_constant_shapes(version_dir: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, shape) of every Const node in the SavedModel's graph and functions."""
    graph = saved_model_proto(version_dir).meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for fn in graph.library.function for n in fn.node_def]
    shapes = []
    for node in nodes:
        if node.op == "Const":
            tensor = node.attr["value"].tensor
            shapes.append((tf.dtypes.as_dtype(tensor.dtype).name,
                           tuple(d.size for d in tensor.tensor_shape.dim)))
    return shapes


def test_training_only_parts_are_not_in_the_served_graph(model, tiny):
    exported = saved_variable_names(tiny.version_dir)
    trained = {v.path for v in model.variables}
    training_only = {v.path for v in model.similarity.variables}
    assert training_only and not training_only & exported  # the contrastive W
    assert exported <= trained
    # Everything else that is saved is a model weight the CTR score reads; the rest is RNG state.
    left_out = trained - exported - training_only
    assert left_out and all("seed_generator" in path for path in left_out)
    # The contrastive positives table (a constant of the training graph) is not in the graph,
    # while the vocabularies (constants of the same kind) are.
    constants = graph_constant_shapes(tiny.version_dir)
    positives = tuple(model.tasks[-1].query_positives.shape)   # the contrastive task's
    assert ("int64", positives) not in constants
    queries = len(model.vocabularies.values[S.VOCAB_QUERIES])
    assert ("string", (queries,)) in constants


@pytest.mark.slow
def test_versions_count_up_and_are_written_atomically(tiny, tmp_path, monkeypatch):
    base = tmp_path / "queryrec"
    base.mkdir()
    for name in ("3", "10", ".export-leftover", "notes", "7x"):
        (base / name).mkdir()
    (base / "11").write_text("a file, not a version")
    assert export.existing_versions(str(base)) == [3, 10]
    assert export.next_version(str(base)) == 12
    assert export.next_version(str(tmp_path / "absent")) == 1

    seen = {}
    real_verify = export.verify

    def verify_and_look(path, *args):
        seen["staging"] = path
        seen["versions_while_writing"] = export.existing_versions(str(base))
        seen["complete"] = os.path.exists(os.path.join(path, "saved_model.pb"))
        return real_verify(path, *args)

    monkeypatch.setattr(export, "verify", verify_and_look)
    path = export.export(tiny.model_dir, str(base))
    assert path == str(base / "12")
    assert os.path.dirname(seen["staging"]) == str(base)
    assert os.path.basename(seen["staging"]).startswith(".")
    assert seen["versions_while_writing"] == [3, 10] and seen["complete"]
    assert not os.path.exists(seen["staging"])
    assert os.path.exists(base / "12" / "saved_model.pb")
    assert os.path.exists(base / "12" / export.WARMUP_FILE)

    class CrashingArchive:  # dies half-way through writing, like a full disk
        def write_out(self, path, **kwargs):
            with open(os.path.join(path, "saved_model.pb"), "wb") as f:
                f.write(b"half")
            raise OSError("No space left on device")

    monkeypatch.setattr(export, "build_archive", lambda *args: CrashingArchive())
    # The stranger's directory as just created (unlocked but younger than
    # STALE_STAGING_SECONDS), however long the first export took on a busy machine.
    os.utime(base / ".export-leftover")
    with pytest.raises(OSError, match="No space left"):
        export.export(tiny.model_dir, str(base))
    assert export.existing_versions(str(base)) == [3, 10, 12]
    assert sorted(p.name for p in base.iterdir() if p.name.startswith(".export-")) == [
        ".export-leftover"]  # its own staging directory is gone, a stranger's is left alone


def one_name_per_model_class() -> list[str]:
    """din (reads no queries: its query lookups are never built) and the first registered name
    of every other model class, so a model added to the registry is exported here too."""
    names = {"din": None}
    for name, (cls, _) in MODELS.items():
        if cls not in names.values() and cls is not MODELS["queryrec"][0]:
            names[name] = cls
    return list(names)


@pytest.mark.slow
@pytest.mark.parametrize("name", one_name_per_model_class())
def test_every_model_family_exports_with_scores_equal_to_the_model(name, tiny, tmp_path):
    config = load_config(f"configs/{name}.yaml",
                         [o for o in TINY if o.startswith("model.") and reads_key(name, o)])
    model = build_model(config.model, tiny.data_dir)  # untrained: the export must not care
    rows, serialized = export.sample_rows(tiny.data_dir, model.schema, rows=16)
    # The export's default path: score_candidates with its XLA part (din and dcn failed here
    # with an 'untracked' StaticHashTable: the query tables din never reads).
    export.build_archive(model, model.schema).write_out(str(tmp_path), verbose=False)
    assert xla_compiled_functions(str(tmp_path)), "score_candidates has no XLA part"
    assert export.verify(str(tmp_path), model, model.schema, rows, serialized) <= 1e-5
    assert set(export.SIGNATURES) <= set(tf.saved_model.load(str(tmp_path)).signatures)


def xla_compiled_functions(version_dir: str) -> list[str]:
    """Names of the SavedModel's functions that XLA must compile (jit_compile=True)."""
    graph = saved_model_proto(version_dir).meta_graphs[0].graph_def
    return [fn.signature.name for fn in graph.library.function
            if fn.attr["_XlaMustCompile"].b]


def test_cli_errors_are_messages(tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        export.main(["--model-dir", str(tmp_path / "none"), "--output", str(tmp_path / "out")])
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        export.main(["--model-dir", tiny.model_dir, "--output", tiny.base_path, "--version", "1"])
    assert info.value.code == 2 and "never overwritten" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as info:
        export.main(["--model-dir", tiny.model_dir, "--output", str(tmp_path / "file")])
    assert info.value.code == 2 and "not a directory" in capsys.readouterr().err


HOLD_STAGING = """
import sys, time
from qrec_tf import export
with export.staging_directory(sys.argv[1]) as path:
    print(path, flush=True)
    time.sleep(600)
"""


def test_staging_directories_of_killed_exports_are_removed(tmp_path):
    """A killed export leaves its `.export-*` directory; the next export removes it, while a
    live export's (still locked) and a stranger's fresh one are left alone."""
    def hold():
        process = subprocess.Popen([sys.executable, "-c", HOLD_STAGING, str(tmp_path)],
                                   stdout=subprocess.PIPE, text=True)
        return process, process.stdout.readline().strip()

    killed, killed_path = hold()
    live, live_path = hold()
    try:
        killed.kill()  # SIGKILL: nothing of the export's own cleanup runs
        killed.wait(timeout=60)
        assert os.path.isdir(killed_path) and os.path.isdir(live_path)
        fresh = tmp_path / ".export-just-made"
        fresh.mkdir()
        old = time.time() - 2 * export.STALE_STAGING_SECONDS
        for path in (killed_path, live_path):
            os.utime(path, (old, old))
        assert export.remove_stale_staging(str(tmp_path)) == [killed_path]
        assert not os.path.exists(killed_path)
        assert os.path.isdir(live_path) and fresh.is_dir()
    finally:
        live.kill()
        live.wait(timeout=60)
    assert export.remove_stale_staging(str(tmp_path), min_age_seconds=0) == sorted(
        [live_path, str(fresh)])
