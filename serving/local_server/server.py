"""The server: the REST and gRPC front ends on one ModelRepository, the polling thread, and
`python -m serving.local_server`'s command line (TF Serving's flag names).

The model is named either by --model_name/--model_base_path (the newest version is served) or
by --model_config_file (a models.config: version policy and version labels), which is re-read
every --model_config_file_poll_wait_seconds, as TF Serving does, so a label can be moved
(a canary promoted, a rollback) without a restart."""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import signal
import threading
import time

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from serving.local_server.batching import Batcher, BatchingParameters, read_batching_parameters
from serving.local_server.grpc_api import ModelService, PredictionService
from serving.local_server.metrics import Metrics, read_monitoring_config
from serving.local_server.rest import RestServer
from serving.local_server.validation import (
    DEFAULT_BODY_TIMEOUT_SECONDS,
    DEFAULT_HEADER_TIMEOUT_SECONDS,
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_SCORED_ROWS,
    Limits,
)
from serving.local_server.versions import ModelConfig, ModelRepository, read_model_config

LOG = logging.getLogger("serving.local_server")


class LocalServer:
    """The REST and gRPC front ends on one ModelRepository, plus the polling thread.

    Port 0 picks a free port (read `rest_port` / `grpc_port` after `start()`); None disables that
    front end. Use as a context manager, or call `start()` and `stop()`. `model_config_file`
    (then model_name and model_base_path are None) is re-read every `config_poll_seconds`;
    `metrics_path` serves Prometheus metrics on the REST port.
    """

    def __init__(self, model_name: str | None, model_base_path: str | None, *,
                 host: str = "127.0.0.1",
                 rest_api_port: int | None = 8501, grpc_port: int | None = 8500,
                 poll_seconds: float = 1.0, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 rest_api_num_threads: int = 8, grpc_max_threads: int = 8,
                 max_candidates_per_request: int = DEFAULT_MAX_SCORED_ROWS,
                 idle_timeout_seconds: float = DEFAULT_IDLE_TIMEOUT_SECONDS,
                 body_timeout_seconds: float = DEFAULT_BODY_TIMEOUT_SECONDS,
                 header_timeout_seconds: float = DEFAULT_HEADER_TIMEOUT_SECONDS,
                 model_config_file: str | None = None, config_poll_seconds: float = 0.0,
                 metrics_path: str | None = None, batching: BatchingParameters | None = None):
        if rest_api_port is None and grpc_port is None:
            raise ValueError("at least one of the REST and gRPC ports must be set")
        self.model_config_file = model_config_file
        self.config_poll_seconds = config_poll_seconds
        if model_config_file:
            self._config_mtime = os.stat(model_config_file).st_mtime_ns
            config = read_model_config(model_config_file)
        else:
            config = ModelConfig(model_name, model_base_path)
        self.repository = ModelRepository(config.name, config.base_path, config)
        self.metrics = Metrics() if metrics_path else None
        self.metrics_path = metrics_path
        self.batching = batching
        self.batcher: Batcher | None = None
        self.host = host
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._rest = None
        self._grpc = None
        self.rest_port = self.grpc_port = None
        self._requested = (rest_api_port, grpc_port)
        self.limits = Limits(max_request_bytes, max_candidates_per_request,
                             idle_timeout_seconds, body_timeout_seconds, header_timeout_seconds)
        self._threads_per_front_end = (rest_api_num_threads, grpc_max_threads)
        self._threads: list[threading.Thread] = []

    def start(self) -> "LocalServer":
        rest_api_port, grpc_port = self._requested
        rest_threads, grpc_threads = self._threads_per_front_end
        max_request_bytes = self.limits.max_request_bytes
        self.repository.poll()  # serve a version from the first request on, when there is one
        if self.batching is not None:
            self.batcher = Batcher(self.batching, metrics=self.metrics,
                                   model_name=self.repository.model_name)
        try:
            if rest_api_port is not None:
                self._rest = RestServer((self.host, rest_api_port), self.repository,
                                        self.limits, rest_threads, self.metrics,
                                        self.metrics_path, self.batcher)
                self.rest_port = self._rest.server_address[1]
                self._spawn(self._rest.serve_forever, "rest")
            if grpc_port is not None:
                self._grpc = grpc.server(
                    concurrent.futures.ThreadPoolExecutor(grpc_threads, "grpc"),
                    options=[("grpc.max_receive_message_length", max_request_bytes),
                             ("grpc.so_reuseport", 0)])  # a port in use is an error
                prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
                    PredictionService(self.repository, self.limits, self.metrics, self.batcher),
                    self._grpc)
                model_service_pb2_grpc.add_ModelServiceServicer_to_server(
                    ModelService(self.repository, self.metrics), self._grpc)
                self.grpc_port = self._grpc.add_insecure_port(f"{self.host}:{grpc_port}")
                if not self.grpc_port:
                    raise OSError(f"could not listen for gRPC on {self.host}:{grpc_port}")
                self._grpc.start()
        except BaseException:
            self.stop()  # the REST front end may already be listening
            raise
        self._spawn(self._poll_forever, "poll")
        return self

    def _spawn(self, target, name):
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _poll_forever(self):
        next_config = time.monotonic() + self.config_poll_seconds
        while not self._stop.wait(self.poll_seconds):
            if (self.model_config_file and self.config_poll_seconds > 0
                    and time.monotonic() >= next_config):
                next_config = time.monotonic() + self.config_poll_seconds
                self.reload_config()
            self.repository.poll()

    def reload_config(self) -> bool:
        """Re-reads --model_config_file when it changed; True when a new config was taken. A
        broken file is logged and the old config kept (TF Serving keeps serving too)."""
        try:
            mtime = os.stat(self.model_config_file).st_mtime_ns
            if mtime == self._config_mtime:
                return False
            self._config_mtime = mtime
            self.repository.set_config(read_model_config(self.model_config_file))
        except (OSError, ValueError) as error:
            LOG.error("keeping the previous model config: %s", error)
            return False
        LOG.info("reloaded %s: labels %s", self.model_config_file,
                 dict(self.repository.config.labels))
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait()
        if self.batcher is not None:
            self.batcher.stop()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.local_server",
        description="Development stand-in for TF Serving (NOT for production: use the "
                    "tensorflow/serving image). Serves the newest version under "
                    "--model_base_path over REST and gRPC with TF Serving's API.")
    parser.add_argument("--model_name", help="name in request URLs / model_spec")
    parser.add_argument("--model_base_path",
                        help="directory of numbered version directories, e.g. export/queryrec")
    parser.add_argument("--model_config_file",
                        help="a models.config (ModelServerConfig text proto, one model): version "
                             "policy and version labels; instead of --model_name and "
                             "--model_base_path")
    parser.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0,
                        help="re-read --model_config_file this often (default 0: never)")
    parser.add_argument("--enable_batching", action="store_true",
                        help="score concurrent requests of one signature together (TF "
                             "Serving's request batching)")
    parser.add_argument("--batching_parameters_file",
                        help="a batching.config (BatchingParameters); with --enable_batching")
    parser.add_argument("--monitoring_config_file",
                        help="a monitoring.config; with prometheus_config enabled, metrics are "
                             "served on the REST port at its path")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    parser.add_argument("--rest_api_port", type=int, default=8501,
                        help="REST port (default 8501); 0 disables REST, as in TF Serving")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only; not a "
                             "TF Serving flag)")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="how often to look for a new version (default 1)")
    parser.add_argument("--max_request_bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                        help=f"largest request accepted (default {DEFAULT_MAX_REQUEST_BYTES})")
    parser.add_argument("--rest_api_num_threads", type=int, default=8,
                        help="REST requests that run the model at once (default 8); every "
                             "connection has its own thread")
    parser.add_argument("--grpc_max_threads", type=int, default=8)
    parser.add_argument("--max_candidates_per_request", type=int,
                        default=DEFAULT_MAX_SCORED_ROWS,
                        help="most rows one request may score: users x candidates for "
                             "score_candidates, the batch for the others (default "
                             f"{DEFAULT_MAX_SCORED_ROWS}; not a TF Serving flag)")
    parser.add_argument("--rest_api_idle_timeout_seconds", type=float,
                        default=DEFAULT_IDLE_TIMEOUT_SECONDS,
                        help="a kept-alive REST connection without a request for this long is "
                             f"closed (default {DEFAULT_IDLE_TIMEOUT_SECONDS:g})")
    parser.add_argument("--rest_api_body_timeout_seconds", type=float,
                        default=DEFAULT_BODY_TIMEOUT_SECONDS,
                        help="a request body not all arrived this long after its headers is "
                             f"answered 400 (default {DEFAULT_BODY_TIMEOUT_SECONDS:g}; a total)")
    parser.add_argument("--rest_api_header_timeout_seconds", type=float,
                        default=DEFAULT_HEADER_TIMEOUT_SECONDS,
                        help="a request line and headers not all arrived this long after their "
                             "first byte close the connection (default "
                             f"{DEFAULT_HEADER_TIMEOUT_SECONDS:g}; a total; not a TF Serving "
                             "flag)")
    args = parser.parse_args(argv)
    for flag in ("port", "rest_api_port"):
        if not 0 <= getattr(args, flag) < 65536:
            parser.error(f"--{flag} must be a port number in [0, 65535]")
    if args.port == 0:
        parser.error("--port must be a port number (gRPC cannot be disabled)")
    if args.port == args.rest_api_port:
        parser.error("--port and --rest_api_port must differ")
    for flag in ("file_system_poll_wait_seconds", "max_request_bytes", "rest_api_num_threads",
                 "grpc_max_threads", "max_candidates_per_request",
                 "rest_api_idle_timeout_seconds", "rest_api_body_timeout_seconds",
                 "rest_api_header_timeout_seconds"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag} must be positive")
    if args.model_config_file:
        if args.model_name or args.model_base_path:
            parser.error("give either --model_config_file or --model_name and "
                         "--model_base_path, not both (as TF Serving)")
        try:
            base_path = read_model_config(args.model_config_file).base_path
        except ValueError as error:
            parser.error(str(error))
    elif not (args.model_name and args.model_base_path):
        parser.error("--model_name and --model_base_path (or --model_config_file) are required")
    else:
        base_path = args.model_base_path
    if not os.path.isdir(base_path):
        parser.error(f"model base path {base_path!r} is not a directory (export a "
                     "model with `python -m qrec_tf.export --output DIR`)")
    batching = None
    if args.batching_parameters_file and not args.enable_batching:
        parser.error("--batching_parameters_file needs --enable_batching")
    if args.enable_batching:
        try:
            batching = (read_batching_parameters(args.batching_parameters_file)
                        if args.batching_parameters_file else BatchingParameters())
        except (OSError, ValueError) as error:
            parser.error(f"cannot read --batching_parameters_file: {error}")
    metrics_path = None
    if args.monitoring_config_file:
        try:
            metrics_path = read_monitoring_config(args.monitoring_config_file)
        except (OSError, ValueError) as error:
            parser.error(f"cannot read --monitoring_config_file: {error}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    LOG.warning("development stand-in for TF Serving; use the tensorflow/serving image in "
                "production")
    server = LocalServer(args.model_name, args.model_base_path, host=args.host,
                         rest_api_port=args.rest_api_port or None, grpc_port=args.port,
                         poll_seconds=args.file_system_poll_wait_seconds,
                         max_request_bytes=args.max_request_bytes,
                         rest_api_num_threads=args.rest_api_num_threads,
                         grpc_max_threads=args.grpc_max_threads,
                         max_candidates_per_request=args.max_candidates_per_request,
                         idle_timeout_seconds=args.rest_api_idle_timeout_seconds,
                         body_timeout_seconds=args.rest_api_body_timeout_seconds,
                         header_timeout_seconds=args.rest_api_header_timeout_seconds,
                         model_config_file=args.model_config_file,
                         config_poll_seconds=args.model_config_file_poll_wait_seconds,
                         metrics_path=metrics_path, batching=batching)
    try:
        server.start()
    except (OSError, RuntimeError) as error:  # grpc raises RuntimeError when it cannot bind
        parser.error(f"cannot listen: {error}")
    if server.repository.current is None:
        LOG.warning("no version under %s yet; waiting for one", base_path)
    if server.rest_port:
        LOG.info("REST on http://%s:%d/v1/models/%s", args.host, server.rest_port,
                 server.repository.model_name)
        if metrics_path:
            LOG.info("metrics on http://%s:%d%s", args.host, server.rest_port, metrics_path)
    LOG.info("gRPC on %s:%d", args.host, server.grpc_port)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    LOG.info("stopping")
    server.stop()
    return 0
