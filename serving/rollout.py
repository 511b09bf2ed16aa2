"""Moves the version labels of a rollout models.config: a new export out as canary, promoted to
stable, or rolled back. TF Serving (and serving.local_server) re-read the file every
--model_config_file_poll_wait_seconds, so no server restarts.

    python -m serving.rollout --config serving/models.rollout.config show
    python -m serving.rollout --config ... canary 3     # serve version 3 too, labelled canary
    python -m serving.rollout --config ... promote      # stable -> the canary's version
    python -m serving.rollout --config ... rollback     # undo the last canary or promote
    python -m serving.rollout --config ... retire       # unload versions without a label

The file is a ModelServerConfig with one model, a `specific` version policy and the labels
`stable`, `canary` (a version being tried on a share of traffic) and `previous` (the stable
version before the last promote, kept loaded so that a rollback is instant). It is rewritten
whole and renamed into place, never edited in place, so a server never reads half a file.
Clients pick a label per request: `serving.client --label canary`, REST
`/v1/models/<name>/labels/canary:predict`, gRPC `model_spec.version_label`.
"""

from __future__ import annotations

import argparse
import os
import sys

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from qrec_tf.version_names import check_version

STABLE, CANARY, PREVIOUS = "stable", "canary", "previous"


def read(path: str) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    with open(path) as f:
        text_format.Parse(f.read(), config)
    models = config.model_config_list.config
    if len(models) != 1:
        raise ValueError(f"{path} must list exactly one model, it lists {len(models)}")
    return config


def write(path: str, config: model_server_config_pb2.ModelServerConfig, header: str) -> None:
    model = config.model_config_list.config[0]
    labelled = set(model.version_labels.values())
    versions = sorted(labelled | set(model.model_version_policy.specific.versions))
    model.model_version_policy.specific.ClearField("versions")
    model.model_version_policy.specific.versions.extend(versions)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(header + text_format.MessageToString(config))
    os.replace(tmp, path)


def apply(config: model_server_config_pb2.ModelServerConfig, action: str,
          version: int | None = None) -> str:
    """Changes `config` in place; returns what was done, in words. ValueError when the action
    does not fit the labels (e.g. promote without a canary)."""
    model = config.model_config_list.config[0]
    labels = model.version_labels
    versions = model.model_version_policy.specific.versions
    if action == "canary":
        if STABLE not in labels:
            raise ValueError("no stable version yet: label one first (the config's "
                             "version_labels { key: \"stable\" value: V })")
        if version == labels[STABLE]:
            raise ValueError(f"version {version} is already stable")
        labels[CANARY] = version
        versions.append(version)
        return f"version {version} is served as canary beside stable {labels[STABLE]}"
    if action == "promote":
        if CANARY not in labels:
            raise ValueError("no canary to promote")
        labels[PREVIOUS] = labels[STABLE]
        labels[STABLE] = labels[CANARY]
        del labels[CANARY]
        return f"stable is now version {labels[STABLE]} (previous: {labels[PREVIOUS]})"
    if action == "rollback":
        if CANARY in labels:
            dropped = labels[CANARY]
            del labels[CANARY]
            _drop(versions, dropped, labels)
            return f"canary version {dropped} withdrawn; stable stays {labels[STABLE]}"
        if PREVIOUS in labels:
            dropped = labels[STABLE]
            labels[STABLE] = labels[PREVIOUS]
            del labels[PREVIOUS]
            _drop(versions, dropped, labels)
            return f"stable is back to version {labels[STABLE]} (version {dropped} unloaded)"
        raise ValueError("nothing to roll back: no canary and no previous version")
    if action == "retire":
        keep = set(labels.values())
        retired = sorted(set(versions) - keep)
        model.model_version_policy.specific.ClearField("versions")
        versions.extend(sorted(keep))
        if PREVIOUS in labels:  # retiring ends the window for an instant rollback
            retired.append(labels[PREVIOUS])
            _drop(versions, labels[PREVIOUS], labels, force=True)
            del labels[PREVIOUS]
        return f"unloaded versions {sorted(retired)}" if retired else "nothing to unload"
    raise ValueError(f"unknown action {action!r}")


def _drop(versions, version: int, labels, force: bool = False) -> None:
    """Removes `version` from the policy unless another label still names it."""
    others = [v for k, v in labels.items() if v == version]
    if force or not others:
        kept = [v for v in versions if v != version]
        del versions[:]
        versions.extend(kept)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.rollout",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the models.config the server reads")
    parser.add_argument("action", choices=("show", "canary", "promote", "rollback", "retire"))
    parser.add_argument("version", nargs="?", type=int, help="with canary: the new version")
    args = parser.parse_args(argv)
    if (args.action == "canary") != (args.version is not None):
        parser.error("canary takes a version number, the other actions none")
    try:
        if args.version is not None:
            check_version(args.version)
        config = read(args.config)
        with open(args.config) as f:
            header = "".join(line for line in f if line.startswith("#"))
        if args.action != "show":
            print(apply(config, args.action, args.version))
            write(args.config, config, header)
    except (OSError, ValueError, text_format.ParseError) as error:
        parser.error(str(error))
    model = config.model_config_list.config[0]
    print(f"{model.name}: versions {sorted(model.model_version_policy.specific.versions)}, "
          f"labels {dict(sorted(model.version_labels.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
