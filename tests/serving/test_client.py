"""serving.client against the local server: REST and gRPC give the in-process scores through the
same code path, errors arrive as ServingError, requests built from the data are the user's, and
the CLI ranks a user's candidates."""

import json

import numpy as np
import pytest

from qrec_tf import export
from qrec_tf import schema as S
from serving import client as serving_client
from serving.client import ServingClient, ServingError, request_from_data
from tests.serving.conftest import TIMEOUT, in_process
from tests.serving.test_local_server import free_port
from tests.serving.tiny_model import MODEL_NAME

PROTOCOLS = ("rest", "grpc")


def target(server, protocol):
    return f"127.0.0.1:{server.rest_port if protocol == 'rest' else server.grpc_port}"


@pytest.fixture(scope="module")
def request_data(tiny):
    return request_from_data(tiny.data_dir, num_candidates=12)


def candidate_rows(context, candidates, model):
    """The serving_default rows that score_candidates stands for: the context repeated."""
    n = len(candidates[S.ITEM_ID])
    rows = {}
    for f in export.context_features(model.schema):
        value = np.asarray([context[f.name]], dtype=object if f.dtype == "string" else np.int64)
        if f.dtype == "string":
            value = np.vectorize(str.encode, otypes=[object])(value)
        rows[f.name] = np.repeat(value, n, axis=0)
    rows.update({name: np.asarray(values, np.int64) for name, values in candidates.items()})
    return rows


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_score_candidates_equals_in_process_scores(server, model, request_data, protocol):
    _, context, candidates = request_data
    with ServingClient(target(server, protocol), MODEL_NAME, protocol,
                       timeout=TIMEOUT) as client:
        assert client.wait_until_available(timeout=TIMEOUT) == 1
        assert client.status() == [{"version": 1, "state": "AVAILABLE"}]
        ctr = client.score_candidates(context, candidates)
        again = client.score_candidates(context, candidates)  # the kept connection is reused
    assert ctr.dtype == np.float32 and ctr.shape == (12,)
    np.testing.assert_allclose(ctr, in_process(model, candidate_rows(context, candidates, model)),
                               atol=1e-5)
    np.testing.assert_array_equal(ctr, again)


def test_rest_and_grpc_agree_on_every_signature(server, model, rows):
    features, serialized = rows
    expected = in_process(model, features)
    for protocol in PROTOCOLS:
        with ServingClient(target(server, protocol), MODEL_NAME, protocol,
                           version=1, timeout=TIMEOUT) as client:
            dtypes = client.input_dtypes(export.SERVING_DEFAULT)
            assert set(dtypes) == {f.name for f in model.schema.model_features}
            scores = client.predict(features)[export.OUTPUT_KEY]
            np.testing.assert_allclose(scores, expected, atol=1e-5)
            scores = client.predict({export.EXAMPLES_KEY: serialized},
                                    export.FROM_EXAMPLES)[export.OUTPUT_KEY]
            np.testing.assert_allclose(scores, expected, atol=1e-5)


def test_request_from_data_is_the_users_own_example(tiny, model, request_data):
    user_id, context, candidates = request_data
    features, _ = export.sample_rows(tiny.data_dir, model.schema, "test", rows=10_000)
    row = int(np.flatnonzero(features[S.USER_ID] == user_id)[0])
    assert context[S.USER_ID] == user_id
    assert context[S.HIST_ITEM_IDS] == features[S.HIST_ITEM_IDS][row].tolist()
    assert context[S.QUERY_KEYS] == [k.decode() for k in features[S.QUERY_KEYS][row]]
    assert set(context) == {f.name for f in export.context_features(model.schema)}
    assert set(candidates) == {f.name for f in export.candidate_features(model.schema)}
    items = candidates[S.ITEM_ID]
    assert items[0] == features[S.ITEM_ID][row] and len(set(items)) == len(items) == 12
    for i, item in enumerate(items):  # each candidate keeps its own item features
        source = int(np.flatnonzero(features[S.ITEM_ID] == item)[0])
        assert candidates[S.CATEGORY_ID][i] == features[S.CATEGORY_ID][source]
    with pytest.raises(ValueError, match="no example"):
        request_from_data(tiny.data_dir, user_id=10 ** 12)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_errors_arrive_as_serving_errors(server, request_data, protocol):
    _, context, candidates = request_data
    with ServingClient(target(server, protocol), MODEL_NAME, protocol,
                       timeout=TIMEOUT) as client:
        broken = {**context, S.HIST_ITEM_IDS: context[S.HIST_ITEM_IDS][:-1]}
        with pytest.raises(ServingError) as info:
            client.score_candidates(broken, candidates)
        assert info.value.code in (400, "INVALID_ARGUMENT")
        assert S.HIST_ITEM_IDS in info.value.message
        with pytest.raises(ServingError, match="no signature"):
            client.predict({}, "nope")
        with pytest.raises(ValueError, match="one value per candidate"):
            client.score_candidates(context, {**candidates, S.AUTHOR_ID: [1]})
        assert client.score_candidates(context, candidates).shape == (12,)  # still fine
    with ServingClient(target(server, protocol), "nope", protocol, timeout=TIMEOUT) as client:
        with pytest.raises(ServingError) as info:
            client.status()
        assert info.value.code in (404, "NOT_FOUND")
    with ServingClient(f"127.0.0.1:{free_port()}", MODEL_NAME, protocol, timeout=2) as client:
        with pytest.raises(ServingError) as info:
            client.wait_until_available(timeout=1)
        assert info.value.code == "UNAVAILABLE"


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="protocol"):
        ServingClient("localhost:8501", MODEL_NAME, "soap")
    with pytest.raises(ValueError, match="host:port"):
        ServingClient("localhost", MODEL_NAME)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cli_ranks_a_users_candidates(server, tiny, model, request_data, protocol, capsys):
    user_id, context, candidates = request_data
    assert serving_client.main(["--server", target(server, protocol), "--protocol", protocol,
                                "--model-name", MODEL_NAME, "--data", tiny.data_dir,
                                "--user-id", str(user_id), "--candidates", "12", "--top", "5",
                                "--timeout", str(TIMEOUT)]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = in_process(model, candidate_rows(context, candidates, model))
    best = np.argsort(-expected, kind="stable")[:5]
    assert printed[S.USER_ID] == user_id and printed["candidates"] == 12
    assert [entry[S.ITEM_ID] for entry in printed["top"]] == [candidates[S.ITEM_ID][i]
                                                             for i in best]
    np.testing.assert_allclose([entry[export.OUTPUT_KEY] for entry in printed["top"]],
                               expected[best], atol=1e-5)


def test_cli_takes_a_request_file_and_reports_mistakes(server, request_data, tmp_path, capsys):
    _, context, candidates = request_data
    good = tmp_path / "request.json"
    good.write_text(json.dumps({"context": context, "candidates": candidates}))
    argv = ["--server", target(server, "rest"), "--model-name", MODEL_NAME,
            "--timeout", str(TIMEOUT), "--request"]
    assert serving_client.main([*argv, str(good)]) == 0
    assert len(json.loads(capsys.readouterr().out)["top"]) == 10

    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"context": {**context, S.USER_ID: "seven"},
                                 "candidates": candidates}))
    assert serving_client.main([*argv, str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "python -m serving.client: error:" in err and S.USER_ID in err
    for content, words in (("{", "Expecting"), ("[]", "exactly the keys"),
                           (json.dumps({"context": context, "candidates": {}}), S.ITEM_ID)):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(SystemExit) as info:
            serving_client.main([*argv, str(bad)])
        assert info.value.code == 2 and words in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        serving_client.main([*argv, str(tmp_path / "absent.json")])
    assert info.value.code == 2
    assert serving_client.main(["--server", f"127.0.0.1:{free_port()}", "--model-name", MODEL_NAME,
                                "--request", str(good), "--timeout", "2"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err
