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
from serving.local_server.metrics import BATCH_RUN_TIME, BATCH_SIZE, QUEUING_LATENCY
from tests.serving.conftest import TIMEOUT
from tests.serving.tiny_model import MODEL_NAME

METRICS_PATH = "/monitoring/prometheus/metrics"


def test_batching_config_is_read_as_batching_parameters(tmp_path):
    assert read_batching_parameters("serving/batching.config") == BatchingParameters(
        max_batch_size=4096, batch_timeout_micros=0, max_enqueued_batches=100,
        num_batch_threads=1, pad_variable_length_inputs=True)
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
                     batching=params, metrics_path=METRICS_PATH) as server:
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
        # The batching metrics: one observation per batch of its users (8 in all, one per
        # request), one queueing time per request, one run time per batch.
        metrics, batches = server.metrics, server.batcher.batches
        assert metrics.batch_summary(BATCH_SIZE, export.SCORE_CANDIDATES) == (batches, 8.0)
        assert metrics.batch_summary(QUEUING_LATENCY, export.SCORE_CANDIDATES)[0] == 8
        runs, run_us = metrics.batch_summary(BATCH_RUN_TIME, export.SCORE_CANDIDATES)
        assert runs == batches and run_us > 0
        text = metrics.render()
        labels = f'model_name="{MODEL_NAME}",signature_name="score_candidates"'
        assert f"{BATCH_SIZE}_count{{{labels}}} {batches}" in text
        assert f"{BATCH_SIZE}_sum{{{labels}}} 8.0" in text
        assert f'{BATCH_SIZE}_bucket{{{labels},le="+Inf"}} {batches}' in text
        assert f"{QUEUING_LATENCY}_count{{{labels}}} 8" in text
    for want, have, candidates in zip(expected, got, candidate_sets):
        assert have.shape == (len(candidates["item_id"]),)
        np.testing.assert_allclose(have, want, atol=1e-5)



def test_batch_metrics_are_prometheus_histograms():
    from serving.local_server.metrics import Metrics
    metrics = Metrics()
    metrics.record_batch("m", "s", 3, [0.001, 0.002], 0.005)
    metrics.record_batch("m", "s", 8, [0.0005], 0.02)
    text = metrics.render().splitlines()
    size = [line for line in text if line.startswith(BATCH_SIZE + "_")]
    # Buckets 1, 2, 4, 8, ..: 3 falls in le=4, 8 in le=8 (cumulative counts).
    assert size[:5] == [f'{BATCH_SIZE}_bucket{{model_name="m",signature_name="s",le="{b}"}} {n}'
                        for b, n in (("1", 0), ("2", 0), ("4", 1), ("8", 2), ("16", 2))]
    assert f'{BATCH_SIZE}_sum{{model_name="m",signature_name="s"}} 11.0' in text
    assert f'{QUEUING_LATENCY}_count{{model_name="m",signature_name="s"}} 3' in text
    assert f'{QUEUING_LATENCY}_sum{{model_name="m",signature_name="s"}} 3500.0' in text
    assert f'{BATCH_RUN_TIME}_sum{{model_name="m",signature_name="s"}} 25000.0' in text
    assert metrics.batch_summary(BATCH_SIZE, "s") == (2, 11.0)
