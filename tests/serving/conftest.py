"""The tiny exported model and one local server on it (loopback, free ports), shared by the
serving tests and stopped at the end of the session."""

import shutil
import time

import numpy as np
import pytest
import tensorflow as tf

from qrec_tf import export
from qrec_tf.evaluate import load_trained_model
from serving.local_server import LocalServer
from tests.serving.tiny_model import MODEL_NAME, tiny_model

MAX_REQUEST_BYTES = 1 << 20
MAX_CANDIDATES = 50   # the served model's cap on rows (users x candidates) per request
# Seconds a test waits for an answer: generous, so that a busy 2-core machine (the suite runs
# beside other work) is slow rather than failing; nothing waits this long when all is well.
TIMEOUT = 600


def wait_for(condition, timeout=TIMEOUT) -> bool:
    """Polls `condition` until it holds (True) or `timeout` seconds pass (False): servers pick
    up versions in their own time, and a busy machine must not fail a test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="session")
def server(tiny, tmp_path_factory):
    """A LocalServer on its own copy of the export (tests that add versions use another one)."""
    base = tmp_path_factory.mktemp("served") / MODEL_NAME
    shutil.copytree(tiny.base_path, base)
    with LocalServer(MODEL_NAME, str(base), rest_api_port=0, grpc_port=0, poll_seconds=0.2,
                     max_request_bytes=MAX_REQUEST_BYTES,
                     max_candidates_per_request=MAX_CANDIDATES) as running:
        yield running


@pytest.fixture(scope="session")
def model(tiny):
    return load_trained_model(tiny.model_dir, tiny.data_dir)[1]


@pytest.fixture(scope="session")
def rows(tiny, model):
    """The first 8 test examples: (features {name: array [8, ...]}, serialized [8])."""
    return export.sample_rows(tiny.data_dir, model.schema, "test", rows=8)


def in_process(model, features) -> np.ndarray:
    return model({k: tf.constant(v) for k, v in features.items()}, training=False).numpy()
