"""Shared test setup: Beam and TF write temp files; keep them inside pytest's temp directory."""

import logging
import os
import tempfile

import pytest
from hypothesis import HealthCheck, settings

# Property-based tests: bounded, with no deadline (this machine's speed varies) and no example
# database written into the checkout. A test may lower max_examples further.
settings.register_profile("qrec", max_examples=200, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("qrec")


@pytest.fixture(scope="session", autouse=True)
def _private_tmpdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tmpdir"))
    old_env, old_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = path, path
    yield
    tempfile.tempdir = old_tempdir
    if old_env is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = old_env


@pytest.fixture(autouse=True)
def _restore_root_logger():
    """Each test leaves the root logger as it found it. A command's main() run in a test calls
    logging.basicConfig, which adds a handler on the stream pytest captures for that test and
    closes afterwards; a server thread that logs later (the session's local server) would then
    print 'Logging error ... I/O operation on closed file'."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than ~30 s; still part of `make test`")
    # Keras 3.15 converts tensors with np.array(x, copy=False) internally (numpy 2 deprecation):
    # thousands of copies of one warning that is not ours would bury the ones that are.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
