"""Request batching in the stand-in (issue 32, item 4): concurrent requests of one signature are
scored together and each gets exactly its own scores; batching.config is read as TF Serving's
BatchingParameters."""

import threading

import numpy as np
import pytest

from qrec_tf import export
from qrec_tf import schema as S
from serving.client import ServingClient, _json_value
from serving.local_server import LocalServer
from serving.local_server.batching import BatchingParameters, read_batching_parameters
from tests.serving.conftest import TIMEOUT
from tests.serving.tiny_model import MODEL_NAME


def test_batching_config_is_read_as_batching_parameters(tmp_path):
    assert read_batching_parameters("serving/batching.config") == BatchingParameters(
        max_batch_size=4096, batch_timeout_micros=2000, max_enqueued_batches=100,
        num_batch_threads=2, pad_variable_length_inputs=True)
    bad = tmp_path / "bad.config"
    bad.write_text("max_batch_size { value: 8 }\nallowed_batch_sizes: 4\n")
    with pytest.raises(ValueError, match="allowed_batch_sizes"):
        read_batching_parameters(str(bad))


def test_concurrent_requests_are_scored_together_and_get_their_own_scores(tiny, rows):
    features, schema = rows[0], S.Schema.load(tiny.data_dir)
    contexts, candidate_sets = [], []
    for user in range(8):  # 8 users with 3 to 8 candidates: the batch pads them to 8
        request = export.candidate_request(features, schema, user)
        n = 3 + user % 6
        contexts.append({k: _json_value(v[0]) for k, v in request.items()
                         if not k.startswith(export.CANDIDATE_PREFIX)})
        candidate_sets.append({k.removeprefix(export.CANDIDATE_PREFIX): v[0, :n].tolist()
                               for k, v in request.items()
                               if k.startswith(export.CANDIDATE_PREFIX)})
    params = BatchingParameters(max_batch_size=64, batch_timeout_micros=500_000,
                                num_batch_threads=1, pad_variable_length_inputs=True)
    with LocalServer(MODEL_NAME, tiny.base_path, rest_api_port=None, grpc_port=0) as plain:
        with ServingClient(f"127.0.0.1:{plain.grpc_port}", MODEL_NAME, "grpc",
                           timeout=TIMEOUT) as client:
            expected = [client.score_candidates(c, s) for c, s in zip(contexts, candidate_sets)]
    with LocalServer(MODEL_NAME, tiny.base_path, rest_api_port=0, grpc_port=None,
                     batching=params) as server:
        got = [None] * 8
        start = threading.Barrier(8)

        def score(i):
            with ServingClient(f"127.0.0.1:{server.rest_port}", MODEL_NAME,
                               timeout=TIMEOUT) as client:
                client.metadata()
                start.wait(TIMEOUT)
                got[i] = client.score_candidates(contexts[i], candidate_sets[i])

        threads = [threading.Thread(target=score, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert server.batcher.batched_requests == 8 and server.batcher.batches < 8
    for want, have, candidates in zip(expected, got, candidate_sets):
        assert have.shape == (len(candidates["item_id"]),)
        np.testing.assert_allclose(have, want, atol=1e-5)

