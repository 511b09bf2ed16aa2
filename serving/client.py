"""Scores a user's candidate items against TF Serving or serving.local_server (REST or gRPC).

    python -m serving.client --server localhost:8501 --model-name queryrec \
        (--request request.json | --data DIR [--user-id ID] [--candidates 200]) \
        [--protocol rest|grpc] [--model-version V | --label stable] [--top 10]

It speaks TF Serving's protocol only (REST `:predict` in the columnar format, gRPC
PredictionService), so the same code path works against both servers. Input dtypes come from the
model's own metadata (GetModelMetadata), not from a list here.

A request file holds one user's context (every `score_candidates` input that is not a candidate,
per-user values without a batch axis) and the candidates' item features, one list each:

    {"context": {"user_id": 7, "timestamp": 1654041600000, "hist_item_ids": [...],
                 "query_keys": [...], "query_timestamps": [...], ...},
     "candidates": {"item_id": [11, 12], "author_id": [3, 4], "category_id": [...], ...}}

Times are raw milliseconds (`timestamp`: the request's, `query_timestamps`: each query's session,
-1 where padded): the model computes the ages itself, so a client sends what the log has.

`--data DIR` builds such a request from a split of the Beam job's output instead: the user's example
gives the context, the split's other examples give candidate items with their features.

Library use:

    with ServingClient("localhost:8500", "queryrec", protocol="grpc") as client:
        ctr = client.score_candidates(context, candidates)      # float32 [N]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import re
import socket
import sys
import time
from typing import Any, Mapping, Sequence

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from qrec_tf import schema as S
from qrec_tf.export import CANDIDATE_PREFIX, OUTPUT_KEY, SCORE_CANDIDATES, SERVING_DEFAULT

PROTOCOLS = ("rest", "grpc")
USER_ERRORS = (400, 404, 413, "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED")
MAX_MESSAGE_BYTES = 64 << 20


class ServingError(Exception):
    """The server refused or failed a request; `code` is the HTTP status or gRPC code name."""

    def __init__(self, code: Any, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _json_value(array: np.ndarray) -> Any:
    """A numpy array -> TF Serving's JSON (strings as text, or {"b64": ..} if not UTF-8)."""
    if array.dtype.kind in "OSU":
        def encode(value):
            if isinstance(value, str):
                return value
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                return {"b64": base64.b64encode(value).decode("ascii")}
        return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else []
    return array.tolist()


def _to_array(name: str, value: Any, dtype: tf.DType | None) -> np.ndarray:
    """A value -> an array of the signature's dtype, or a ValueError that names the input."""
    if dtype is None:  # not an input of the signature: the server will say so
        return np.asarray(value)
    if dtype == tf.string:
        array = np.asarray(value, dtype=object)
        if not all(isinstance(v, (str, bytes)) for v in array.flat):
            raise ValueError(f"input {name!r} expects strings")
        return array
    try:
        array = np.asarray(value)
    except ValueError:
        raise ValueError(f"input {name!r} is ragged: every row must have the same length") \
            from None
    # Only lossless conversions: 1.5 or "7" for an integer input is a mistake, not a 1 or a 7.
    allowed = "iu" if dtype.is_integer else "iuf" if dtype.is_floating else "b"
    if array.size and array.dtype.kind not in allowed:
        raise ValueError(f"input {name!r} expects {dtype.name} values, got {array.dtype}")
    return array.astype(dtype.as_numpy_dtype)


class ServingClient:
    """A TF Serving client for one model; one per thread (it keeps one connection open).

    Args:
      target: "host:port" of the REST port (protocol "rest") or the gRPC port ("grpc").
      model_name: the served model's name.
      protocol: "rest" or "grpc".
      version: a version number to pin, or None for the newest the server has.
      timeout: seconds per call.
      label: a version label of the server's models.config ("stable", "canary") instead of a
        version: REST `/labels/<label>`, gRPC `model_spec.version_label`.
    """

    def __init__(self, target: str, model_name: str, protocol: str = "rest",
                 version: int | None = None, timeout: float = 10.0, label: str | None = None):
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        if version is not None and label is not None:
            raise ValueError("give a version or a label, not both")
        if label is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", label):
            raise ValueError(f"a version label is letters, digits, '_', '.', '-'; got {label!r}")
        self.label = label
        target = target.removeprefix("http://").rstrip("/")
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"server must be host:port, got {target!r}")
        self.target, self.model_name, self.protocol = target, model_name, protocol
        self.version, self.timeout = version, timeout
        self._metadata: get_model_metadata_pb2.SignatureDefMap | None = None
        self._http: http.client.HTTPConnection | None = None
        self._channel = None
        if protocol == "grpc":
            self._channel = grpc.insecure_channel(target, options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
            self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    # --- transport --------------------------------------------------------------------------------
    def _model_path(self) -> str:
        path = f"/v1/models/{self.model_name}"
        if self.label is not None:
            return path + f"/labels/{self.label}"
        return path + (f"/versions/{self.version}" if self.version is not None else "")

    def _rest(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):  # once more on a fresh connection if the kept one was closed
            if self._http is None:
                host, _, port = self.target.rpartition(":")
                self._http = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
            try:
                self._http.request(method, path, body=data, headers=headers)
                response = self._http.getresponse()
                payload = response.read()
                break
            except (http.client.HTTPException, ConnectionError, socket.timeout, OSError) as error:
                self._http.close()
                self._http = None
                if attempt == 2 or isinstance(error, (ConnectionRefusedError, socket.timeout)):
                    raise ServingError("UNAVAILABLE", f"{method} http://{self.target}{path}: "
                                                      f"{error}") from None
        try:
            result = json.loads(payload)
        except json.JSONDecodeError:
            result = {"error": payload.decode("utf-8", "replace")[:500]}
        if response.status != 200:
            raise ServingError(response.status, result.get("error", str(result)))
        return result

    def _grpc(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServingError(error.code().name, error.details()) from None

    def _model_spec(self, spec, signature_name: str = "") -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version
        if self.label is not None:
            spec.version_label = self.label
        if signature_name:
            spec.signature_name = signature_name

    # --- API --------------------------------------------------------------------------------------
    def status(self) -> list[dict]:
        """[{"version": int, "state": "AVAILABLE" | ...}] of the served versions."""
        if self.protocol == "rest":
            return [{"version": int(s["version"]), "state": s["state"]}
                    for s in self._rest("GET", self._model_path())["model_version_status"]]
        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._grpc(self._model_stub.GetModelStatus, request)
        return [{"version": s.version,
                 "state": get_model_status_pb2.ModelVersionStatus.State.Name(s.state)}
                for s in response.model_version_status]

    def wait_until_available(self, timeout: float = 60.0, interval: float = 0.2) -> int:
        """Waits until the server serves the model; returns the available version."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                available = [s["version"] for s in self.status() if s["state"] == "AVAILABLE"]
                if available:
                    return max(available)
            except ServingError as error:
                if time.monotonic() > deadline:
                    raise ServingError(error.code, f"model {self.model_name!r} not available "
                                                   f"after {timeout:.0f} s: {error.message}")
            if time.monotonic() > deadline:
                raise ServingError("UNAVAILABLE", f"model {self.model_name!r} not available "
                                                  f"after {timeout:.0f} s")
            time.sleep(interval)

    def metadata(self, refresh: bool = False) -> get_model_metadata_pb2.SignatureDefMap:
        """The model's signature defs (GetModelMetadata), fetched once."""
        if self._metadata is None or refresh:
            signature_defs = get_model_metadata_pb2.SignatureDefMap()
            if self.protocol == "rest":
                result = self._rest("GET", self._model_path() + "/metadata")
                json_format.ParseDict(result["metadata"]["signature_def"], signature_defs,
                                      ignore_unknown_fields=True)
            else:
                request = get_model_metadata_pb2.GetModelMetadataRequest(
                    metadata_field=["signature_def"])
                self._model_spec(request.model_spec)
                response = self._grpc(self._predict_stub.GetModelMetadata, request)
                response.metadata["signature_def"].Unpack(signature_defs)
            self._metadata = signature_defs
        return self._metadata

    def input_dtypes(self, signature_name: str) -> dict[str, tf.DType]:
        defs = self.metadata().signature_def
        if signature_name not in defs:
            raise ServingError("INVALID_ARGUMENT", f"model {self.model_name!r} has no signature "
                                                   f"{signature_name!r}; it has {sorted(defs)}")
        return {name: tf.dtypes.as_dtype(info.dtype)
                for name, info in defs[signature_name].inputs.items()}

    def predict(self, inputs: Mapping[str, Any], signature_name: str = SERVING_DEFAULT
                ) -> dict[str, np.ndarray]:
        """{input name: array-like [batch, ...]} -> {output name: array}."""
        dtypes = self.input_dtypes(signature_name)
        arrays = {name: _to_array(name, value, dtypes.get(name)) for name, value in inputs.items()}
        if self.protocol == "rest":
            body = {"signature_name": signature_name,
                    "inputs": {name: _json_value(a) for name, a in arrays.items()}}
            path = self._model_path() + ":predict"
            outputs = self._rest("POST", path, body)["outputs"]
            if not isinstance(outputs, dict):  # TF Serving drops the name of a single output
                outputs = {next(iter(self.metadata().signature_def[signature_name].outputs)):
                           outputs}
            return {name: np.asarray(value, dtype=np.float32 if name == OUTPUT_KEY else None)
                    for name, value in outputs.items()}
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature_name)
        for name, array in arrays.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(array, dtype=dtypes.get(name)))
        response = self._grpc(self._predict_stub.Predict, request)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def score_candidates(self, context: Mapping[str, Any],
                         candidates: Mapping[str, Sequence]) -> np.ndarray:
        """One user's context (per-user values, no batch axis) and its N candidates' item
        features {item feature name: [N values]} -> click probabilities float32 [N]."""
        lengths = {name: len(values) for name, values in candidates.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"every candidate feature needs one value per candidate: {lengths}")
        inputs = {name: [value] for name, value in context.items()}
        inputs.update({CANDIDATE_PREFIX + name: [list(values)]
                       for name, values in candidates.items()})
        # TF Serving's request batching (pad_variable_length_inputs) may pad the candidates of
        # a batched request up to the longest in its batch: the first N scores are this user's.
        return self.predict(inputs, SCORE_CANDIDATES)[OUTPUT_KEY][0, :lengths.popitem()[1]]

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> "ServingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- requests from the Beam job's output ---------------------------------------------------------
def request_from_data(data_dir: str, user_id: int | None = None, num_candidates: int = 200,
                      split: str = "test") -> tuple[int, dict, dict]:
    """(user id, context, candidates) for `ServingClient.score_candidates` from a split: the
    user's (first) example gives the context and its own item as the first candidate; the other
    examples of the split add distinct items, with their features, up to `num_candidates`."""
    from qrec_tf import data, export

    schema = S.Schema.load(data_dir)
    names = export.example_parse_names(schema)
    rows: dict[str, list] = {name: [] for name in names}
    for batch in data.make_dataset(data_dir, split, 1024, shuffle=False, features=names,
                                   schema=schema):
        for name in names:
            rows[name].append(batch[name].numpy())
    columns = {name: np.concatenate(parts) for name, parts in rows.items()}
    users = columns[S.USER_ID]
    if user_id is None:
        user_id = int(users[0])
    matches = np.flatnonzero(users == user_id)
    if not len(matches):
        raise ValueError(f"user {user_id} has no example in the {split} split of {data_dir}")
    row = matches[0]

    context = {f.name: _json_value(np.asarray(columns[f.name][row]))
               for f in export.context_features(schema)}
    order = [row] + [i for i in range(len(users)) if i != row]
    seen, chosen = set(), []
    for i in order:
        item = int(columns[S.ITEM_ID][i])
        if item not in seen:
            seen.add(item)
            chosen.append(i)
        if len(chosen) == num_candidates:
            break
    candidates = {f.name: columns[f.name][chosen].tolist()
                  for f in export.candidate_features(schema)}
    return user_id, context, candidates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.client",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="localhost:8501",
                        help="host:port of the REST port (--protocol rest, default "
                             "localhost:8501) or of the gRPC port (--protocol grpc)")
    parser.add_argument("--protocol", default="rest", choices=PROTOCOLS)
    parser.add_argument("--model-name", required=True)
    pin = parser.add_mutually_exclusive_group()
    pin.add_argument("--model-version", type=int, help="default: the newest served")
    pin.add_argument("--label", help="a version label of the server's models.config, e.g. "
                                     "stable or canary (default: the newest served)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--request", help="JSON file {\"context\": {...}, \"candidates\": {...}}")
    source.add_argument("--data", help="Beam job output to build the request from")
    parser.add_argument("--user-id", type=int, help="with --data (default: the split's first)")
    parser.add_argument("--candidates", type=int, default=200, help="with --data (default 200)")
    parser.add_argument("--split", default="test", choices=("train", "valid", "test"))
    parser.add_argument("--top", type=int, default=10, help="print the best K (default 10)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    args = parser.parse_args(argv)
    if args.candidates < 1 or args.top < 1:
        parser.error("--candidates and --top must be >= 1")
    try:
        if args.request:
            with open(args.request) as f:
                request = json.load(f)
            if not isinstance(request, dict) or set(request) != {"context", "candidates"}:
                parser.error(f"{args.request} must hold a JSON object with exactly the keys "
                             "\"context\" and \"candidates\"")
            context, candidates = request["context"], request["candidates"]
            if not isinstance(context, dict):
                parser.error(f"{args.request}: \"context\" must be an object {{input: value}}")
            user_id = context.get(S.USER_ID)
        else:
            user_id, context, candidates = request_from_data(args.data, args.user_id,
                                                             args.candidates, args.split)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    if not isinstance(candidates, dict) or S.ITEM_ID not in candidates:
        parser.error(f"the candidates must be an object with at least {S.ITEM_ID!r}")
    try:
        with ServingClient(args.server, args.model_name, args.protocol, args.model_version,
                           args.timeout, args.label) as client:
            ctr = client.score_candidates(context, candidates)
    except (ServingError, ValueError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        # The server refusing the request is the caller's mistake; anything else is not.
        return 2 if getattr(error, "code", 400) in USER_ERRORS else 1
    ranking = sorted(zip(candidates[S.ITEM_ID], ctr.tolist()), key=lambda pair: -pair[1])
    print(json.dumps({S.USER_ID: user_id, "candidates": len(ctr),
                      "top": [{S.ITEM_ID: item, OUTPUT_KEY: round(p, 6)}
                              for item, p in ranking[:args.top]]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
