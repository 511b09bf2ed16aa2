"""The REST front end: TF Serving's URLs and JSON formats, one thread per connection.

POST `/v1/models/<name>[/versions/<v>]:predict` with `{"signature_name": .., "instances": [...]}`
(row format) or `{"inputs": ...}` (columnar format); GET `/v1/models/<name>[/versions/<v>]`
(status) and `.../metadata` (signature defs). Errors are `{"error": "..."}` with HTTP 400, 404,
411/413 or 500.
"""

from __future__ import annotations

import http.server
import json
import logging
import re
import socket
import threading
from typing import Any, Mapping

import grpc
import numpy as np
from google.protobuf import json_format

from serving.local_server.validation import Limits, RequestError, not_found, rest_request
from serving.local_server.versions import ModelRepository, ServedVersion

LOG = logging.getLogger("serving.local_server")

DISCARD_FACTOR = 8  # an oversized body up to this many times the limit is read (and dropped)
_PREDICT = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?:predict$")
_MODEL = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                    r"(?P<metadata>/metadata)?$")


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


def status_json(version: ServedVersion) -> dict:
    return {"model_version_status": [{"version": str(version.version), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


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
        # The socket timeout while waiting for a request line or headers: an idle connection
        # (or one that stalls mid-headers) is closed after it (handle_one_request catches it).
        self.timeout = self.server.limits.idle_timeout
        super().setup()
        self.server.opened(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.closed(self.connection)

    def log_message(self, format, *args):  # requests are logged at DEBUG, not on stderr
        LOG.debug("%s %s", self.address_string(), format % args)

    def _reply(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        try:
            self._reply(200, self._route(method))
        except RequestError as error:
            self._reply(error.http_status, {"error": error.message})
        except Exception as error:  # an unexpected failure is a 500, and the server goes on
            LOG.exception("internal error on %s %s", method, self.path)
            self._reply(500, {"error": f"internal error: {error}"})

    def _route(self, method: str) -> dict:
        repository = self.server.repository
        if method == "POST":
            match = _PREDICT.match(self.path)
            body = self._read_json()  # read before any error, so keep-alive stays in sync
            if not match:
                raise not_found(f"Malformed request: POST {self.path}")
            version = int(match["version"]) if match["version"] else None
            served = repository.get(match["name"], version)
            signature_name, tensors, row_format = rest_request(
                body, served, self.server.limits.max_scored_rows)
            with self.server.model_slots:
                outputs = served.run(signature_name, tensors)
            return rest_response(outputs, row_format)
        match = _MODEL.match(self.path)
        if not match:
            raise not_found(f"Malformed request: GET {self.path}")
        served = repository.get(match["name"], int(match["version"]) if match["version"] else None)
        if match["metadata"]:
            return metadata_json(match["name"], served)
        return status_json(served)

    def _read_json(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise RequestError("a request body with a Content-Length header is required", 411)
        length = int(length)
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
        fewer: at the end of its stream, or when nothing more arrives for
        --rest_api_body_timeout_seconds (a client that declared more than it sends)."""
        timeout = self.server.limits.body_timeout
        self.connection.settimeout(timeout)
        try:
            data = self.rfile.read(length)
        except TimeoutError:
            data = None
        finally:
            self.connection.settimeout(self.server.limits.idle_timeout)
        if data is None or len(data) < length:
            self.close_connection = True
            detail = (f"nothing more arrived for {timeout:g} s" if data is None
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
        # Clients that ask first (curl does for large bodies) learn the limit before sending.
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.server.limits.max_request_bytes:
            self.close_connection = True
            self._reply(413, {"error": self._too_large(int(length)).message})
            return False
        return super().handle_expect_100()

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")


class RestServer(http.server.ThreadingHTTPServer):
    """HTTP server with one thread per connection (the standard library's ThreadingMixIn), so a
    connection that sits idle holds only its own thread, until the idle timeout closes it; at
    most --rest_api_num_threads requests run the model at once."""

    daemon_threads = True

    def __init__(self, address, repository: ModelRepository, limits: Limits, num_threads: int):
        self.repository = repository
        self.limits = limits
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
