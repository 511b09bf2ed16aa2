"""The REST front end: TF Serving's URLs and JSON formats, one thread per connection.

POST `/v1/models/<name>[/versions/<v> | /labels/<label>]:predict` with `{"signature_name": ..,
"instances": [...]}` (row format) or `{"inputs": ...}` (columnar format); GET
`/v1/models/<name>[/versions/<v> | /labels/<label>]` (status) and `.../metadata` (signature
defs); a query string is ignored, as TF Serving does. GET on the monitoring path (when enabled)
answers Prometheus metrics. Errors are `{"error": "..."}` with HTTP 400, 404, 411/413 or 500.

Framing is strict: a Content-Length that is not all ASCII digits, two Content-Length headers or
one with a Transfer-Encoding are a 400 and the connection is closed (the body's end is unknown).
Deadlines are totals, not per-byte timeouts: a connection waits --rest_api_idle_timeout_seconds
for a request's first byte, then its request line and headers must arrive within
--rest_api_header_timeout_seconds and its body within --rest_api_body_timeout_seconds, however
the bytes trickle in. The listen backlog is LISTEN_BACKLOG (the kernel caps it at somaxconn):
Python's default of 5 reset clients when 64 connected at once.
"""

from __future__ import annotations

import http.server
import io
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
from typing import Any, Mapping

import grpc
import numpy as np
from google.protobuf import json_format

from qrec_tf.version_names import parse_version
from serving.local_server.batching import Batcher
from serving.local_server.metrics import Metrics
from serving.local_server.validation import Limits, RequestError, not_found, rest_request
from serving.local_server.versions import ModelRepository, ServedVersion

LOG = logging.getLogger("serving.local_server")

DISCARD_FACTOR = 8  # an oversized body up to this many times the limit is read (and dropped)
LISTEN_BACKLOG = 1024
LINGER_SECONDS = 1.0  # how long a closing connection's unread input is drained (no reset)
_SPEC = (r"^/v1/models/(?P<name>[^/:]+)"
         r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?")
_PREDICT = re.compile(_SPEC + r":predict$", re.ASCII)
_MODEL = re.compile(_SPEC + r"(?P<metadata>/metadata)?$", re.ASCII)
_CONTENT_LENGTH = re.compile(r"[0-9]+", re.ASCII)


class DeadlineReader(io.RawIOBase):
    """The connection's input with a total deadline: each read waits only for the time left
    until `deadline` (time.monotonic()), so a client sending one byte at a time cannot stretch
    it. `first_byte` is set when the first byte after `expect_request()` arrives."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.deadline = float("inf")
        self.waiting_for_request = False
        self.header_seconds = float("inf")

    def readable(self) -> bool:
        return True

    def expect_request(self, idle_seconds: float, header_seconds: float) -> None:
        """Wait up to `idle_seconds` for a request, then `header_seconds` for all its head."""
        self.deadline = time.monotonic() + idle_seconds
        self.waiting_for_request = True
        self.header_seconds = header_seconds

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(left)
        count = self.sock.recv_into(buffer)
        if count and self.waiting_for_request:
            self.waiting_for_request = False
            self.deadline = time.monotonic() + self.header_seconds
        return count


def to_json_value(array: np.ndarray) -> Any:
    if array.dtype == object or array.dtype.kind == "S":
        return np.vectorize(lambda b: b.decode("utf-8", "replace"), otypes=[object])(
            array).tolist() if array.size else array.tolist()
    return array.tolist()


def rest_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> dict:
    """TF Serving's response: one output -> its values, several -> named."""
    if row_format:
        if len(outputs) == 1:
            return {"predictions": to_json_value(next(iter(outputs.values())))}
        rows = len(next(iter(outputs.values())))
        values = {name: to_json_value(v) for name, v in outputs.items()}
        return {"predictions": [{name: v[i] for name, v in values.items()} for i in range(rows)]}
    if len(outputs) == 1:
        return {"outputs": to_json_value(next(iter(outputs.values())))}
    return {"outputs": {name: to_json_value(v) for name, v in outputs.items()}}


def status_json(versions: list[int]) -> dict:
    return {"model_version_status": [{"version": str(version), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}
                                     for version in versions]}


def metadata_json(model_name: str, version: ServedVersion) -> dict:
    return {"model_spec": {"name": model_name, "signature_name": "",
                           "version": str(version.version)},
            "metadata": {"signature_def": json_format.MessageToDict(
                version.signature_defs, preserving_proto_field_name=True)}}


class RestHandler(http.server.BaseHTTPRequestHandler):
    """One connection, on its own thread (RestServer): an idle kept-alive connection ties no
    worker that another client needs, and is closed after --rest_api_idle_timeout_seconds."""

    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection
    disable_nagle_algorithm = True  # headers and body are two writes: don't wait for an ACK
    server: "RestServer"

    def setup(self):
        super().setup()
        # Reads go through a DeadlineReader: a TimeoutError from it ends the connection
        # (handle_one_request catches it).
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader, 1 << 16)
        self.server.opened(self.connection)

    def handle_one_request(self):
        limits = self.server.limits
        # Idle until the first byte of a request, then the header deadline from that byte (a
        # pipelined request already in the buffer is read without waiting).
        self.reader.expect_request(limits.idle_timeout, limits.header_timeout)
        super().handle_one_request()

    def finish(self):
        try:
            super().finish()
            self._linger()
        finally:
            self.server.closed(self.connection)

    def _linger(self) -> None:
        """Half-closes, then drains what the client still sends for up to LINGER_SECONDS:
        closing a socket with unread input makes the kernel send a reset, which can destroy
        the response the client has not read yet."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_SECONDS
            while (left := deadline - time.monotonic()) > 0:
                self.connection.settimeout(left)
                if not self.connection.recv(1 << 16):
                    break
        except OSError:  # reset or timed out: nothing more to do
            pass

    def log_message(self, format, *args):  # requests are logged at DEBUG, not on stderr
        LOG.debug("%s %s", self.address_string(), format % args)

    def _reply(self, status: int, body: Mapping[str, Any] | str,
               content_type: str = "application/json") -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
        self.connection.settimeout(self.server.limits.idle_timeout)  # a client that won't read
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        started = time.perf_counter()
        self._labels = None  # (model name, API, signature) once the request names a model
        status = "OK"
        try:
            path = urllib.parse.urlsplit(self.path).path  # TF Serving ignores a query string
            if method == "GET" and path == self.server.metrics_path:
                self._reply(200, self.server.metrics.render(),
                            "text/plain; version=0.0.4; charset=utf-8")
                return
            self._reply(200, self._route(method, path))
        except RequestError as error:
            status = error.grpc_code.name
            self._reply(error.http_status, {"error": error.message})
        except Exception as error:  # an unexpected failure is a 500, and the server goes on
            status = "INTERNAL"
            LOG.exception("internal error on %s %s", method, self.path)
            self._reply(500, {"error": f"internal error: {error}"})
        finally:
            if self._labels is not None and self.server.metrics is not None:
                name, api, signature = self._labels
                self.server.metrics.record(name, api, "REST", signature, status,
                                           time.perf_counter() - started)

    def _route(self, method: str, path: str) -> dict:
        repository = self.server.repository
        if method == "POST":
            match = _PREDICT.match(path)
            body = self._read_json()  # read before any error, so keep-alive stays in sync
            if not match:
                raise not_found(f"Malformed request: POST {self.path}")
            signature = body.get("signature_name") or "serving_default"
            self._labels = (match["name"], "predict",
                            signature if isinstance(signature, str) else "")
            served = repository.get(match["name"], _version(match), match["label"])
            signature_name, tensors, row_format = rest_request(
                body, served, self.server.limits.max_scored_rows)
            if self.server.batcher is not None:  # the batch threads bound the model's work
                outputs = self.server.batcher.run(served, signature_name, tensors)
            else:
                with self.server.model_slots:
                    outputs = served.run(signature_name, tensors)
            return rest_response(outputs, row_format)
        match = _MODEL.match(path)
        if not match:
            raise not_found(f"Malformed request: GET {self.path}")
        self._labels = (match["name"], "GetModelMetadata" if match["metadata"]
                        else "GetModelStatus", "")
        served = repository.get(match["name"], _version(match), match["label"])
        if match["metadata"]:
            return metadata_json(match["name"], served)
        if match["version"] or match["label"]:
            return status_json([served.version])
        return status_json(sorted(repository.loaded))

    def _content_length(self) -> int:
        """The request's Content-Length, or a 400/411 (and the connection closed) for framing
        that does not say where the body ends unambiguously."""
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get_all("Transfer-Encoding"):
            self.close_connection = True
            if lengths:
                raise RequestError("a request must not have both Content-Length and "
                                   "Transfer-Encoding")
            raise RequestError("a request body with a Content-Length header is required "
                               "(Transfer-Encoding is not supported)", 411)
        if not lengths:
            self.close_connection = True
            raise RequestError("a request body with a Content-Length header is required", 411)
        if len(lengths) > 1:
            self.close_connection = True
            raise RequestError(f"the request has {len(lengths)} Content-Length headers; one is "
                               "allowed")
        if not _CONTENT_LENGTH.fullmatch(lengths[0].strip(" \t")):
            self.close_connection = True
            raise RequestError(f"Content-Length {lengths[0]!r} is not a number of bytes "
                               "(ASCII digits)")
        return int(lengths[0])

    def _read_json(self) -> dict:
        length = self._content_length()
        if length > self.server.limits.max_request_bytes:
            self._discard(length)
            raise self._too_large(length)
        data = self._read_body(length)
        try:
            body = json.loads(data)
        except RecursionError:
            raise RequestError("the request body is nested too deeply") from None
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit number
            raise RequestError(f"the request body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        return body

    def _read_body(self, length: int) -> bytes:
        """The body's `length` bytes, or a 400 (and the connection closed) when the client sends
        fewer: at the end of its stream, or when all of it has not arrived within
        --rest_api_body_timeout_seconds of the headers (a total, not a per-byte timeout)."""
        timeout = self.server.limits.body_timeout
        self.reader.deadline = time.monotonic() + timeout
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            data = None
        if data is None or len(data) < length:
            self.close_connection = True
            detail = (f"it did not arrive within {timeout:g} s" if data is None
                      else f"{len(data)} arrived, then the stream ended")
            raise RequestError(f"the request body is shorter than its Content-Length of {length} "
                               f"bytes ({detail})")
        return data

    def _too_large(self, length: int) -> RequestError:
        return RequestError(f"request of {length} bytes is larger than the server's limit of "
                            f"{self.server.limits.max_request_bytes} bytes (--max_request_bytes)",
                            413, grpc.StatusCode.RESOURCE_EXHAUSTED)

    def _discard(self, length: int) -> None:
        """Reads and drops an oversized body so that the client, still sending it, gets the 413
        instead of a broken pipe; past a bound the connection is just closed."""
        if length > DISCARD_FACTOR * self.server.limits.max_request_bytes:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)

    def handle_expect_100(self) -> bool:
        # Clients that ask first (curl does for large bodies) learn the limit, or that their
        # framing is refused, before sending.
        try:
            length = self._content_length()
        except RequestError as error:
            self._reply(error.http_status, {"error": error.message})
            return False
        if length > self.server.limits.max_request_bytes:
            self.close_connection = True
            self._reply(413, {"error": self._too_large(length).message})
            return False
        return super().handle_expect_100()

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


def _version(match: re.Match) -> int | None:
    """The URL's version number; one past int64 names no version TF Serving could serve."""
    if not match["version"]:
        return None
    version = parse_version(match["version"])
    if version is None:
        raise not_found(f"Malformed request: version {match['version']} is not an int64")
    return version


class RestServer(http.server.ThreadingHTTPServer):
    """HTTP server with one thread per connection (the standard library's ThreadingMixIn), so a
    connection that sits idle holds only its own thread, until the idle timeout closes it; at
    most --rest_api_num_threads requests run the model at once."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG  # listen(5), the standard library's, reset clients

    def __init__(self, address, repository: ModelRepository, limits: Limits, num_threads: int,
                 metrics: Metrics | None = None, metrics_path: str | None = None,
                 batcher: Batcher | None = None):
        self.repository = repository
        self.batcher = batcher
        self.limits = limits
        self.metrics = metrics
        self.metrics_path = metrics_path if metrics is not None else None
        self.model_slots = threading.BoundedSemaphore(num_threads)
        self._connections: set = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, RestHandler)  # binds; closes itself when that fails

    def opened(self, connection) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def closed(self, connection) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    @property
    def open_connections(self) -> int:
        with self._connections_lock:
            return len(self._connections)

    def server_close(self):
        """Stops listening and ends the open connections (their threads then exit) rather than
        leaving them to the idle timeout."""
        super().server_close()
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:  # closed by its thread meanwhile
                pass
