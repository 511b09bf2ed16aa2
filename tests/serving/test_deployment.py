"""What cannot be run here (no Docker engine) is checked by reading it: the Dockerfile's stages,
base images pinned to setup.py's versions, COPY sources that exist and are not excluded from the
build context, the TF Serving config files (models.config parsed as TF Serving's own proto), and
the README's `docker run` command against all of them."""

import fnmatch
import os
import re
import shlex

import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from tests.serving.tiny_model import MODEL_NAME

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(path: str) -> str:
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def pinned(package: str) -> str:
    match = re.search(rf'"{re.escape(package)}==([\d.]+)"', read("setup.py"))
    assert match, f"setup.py does not pin {package}"
    return match.group(1)


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile)
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> dict[str, dict]:
    """stage name -> {"from": image, "args": {name: default}, "steps": [(instr, args)]}."""
    global_args, result, current = {}, {}, None
    for keyword, rest in instructions(read("Dockerfile")):
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            (current["args"] if current else global_args)[name] = default
        elif keyword == "FROM":
            image, _, name = rest.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m[1]], image)
            current = result[name.strip()] = {"from": image, "args": {}, "steps": []}
        else:
            current["steps"].append((keyword, rest))
    return result


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in read(".dockerignore").splitlines()
            if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    parts = path.strip("/").split("/")
    return any(fnmatch.fnmatch("/".join(parts[:i]), pattern.removeprefix("**/"))
               or fnmatch.fnmatch(parts[i - 1], pattern.removeprefix("**/"))
               for pattern in dockerignore_patterns() for i in range(1, len(parts) + 1))


def test_stages_and_base_images_match_setup_py():
    found = stages()
    assert set(found) == {"trainer", "serving", "beam-worker"}
    version = pinned("tensorflow")
    assert pinned("tensorflow-serving-api") == version
    assert found["trainer"]["from"] == f"tensorflow/tensorflow:{version}"
    assert found["serving"]["from"] == f"tensorflow/serving:{version}"
    # The Beam workers' SDK image is Beam's own, of the Beam version setup.py pins.
    beam = re.escape(pinned('apache-beam[tfrecord]'))
    assert re.fullmatch(rf"apache/beam_python3\.\d+_sdk:{beam}",
                        found["beam-worker"]["from"]), found["beam-worker"]["from"]
    entrypoint = [args for keyword, args in found["trainer"]["steps"] if keyword == "ENTRYPOINT"]
    assert entrypoint == ['["python3", "-m", "qrec_tf.train"]']


def test_copy_sources_exist_and_reach_the_build_context():
    found = stages()
    for name, stage in found.items():
        for keyword, args in stage["steps"]:
            if keyword != "COPY":
                continue
            *sources, _ = shlex.split(args)
            for source in sources:
                source = re.sub(r"\$\{(\w+)\}", lambda m: stage["args"][m[1]], source)
                assert not ignored(source), f"{name}: COPY {source} is excluded by .dockerignore"
                if source.startswith("export/"):
                    # Written by `python -m qrec_tf.export --output export/<name>`, never
                    # committed.
                    assert source.rstrip("/") == f"export/{MODEL_NAME}"
                    assert "/export/" in read(".gitignore").split()
                else:
                    assert os.path.exists(os.path.join(ROOT, source)), f"{name}: {source}"
    for package in ("qrec_tf", "pipelines", "serving"):  # what setup.py packages
        assert any(f"{package}/" in args for keyword, args in found["trainer"]["steps"]
                   if keyword == "COPY")
    for never in (".venv", ".git", "demo_out", "export/queryrec/.export-x1"):
        assert ignored(never), never


def model_server_config() -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(read("serving/models.config"),
                             model_server_config_pb2.ModelServerConfig())


def test_tf_serving_config_files():
    configs = model_server_config().model_config_list.config
    assert [(c.name, c.base_path, c.model_platform) for c in configs] == [
        (MODEL_NAME, f"/models/{MODEL_NAME}", "tensorflow")]
    assert configs[0].model_version_policy.latest.num_versions == 1
    # No proto for these two ships with tensorflow-serving-api: check their fields by name.
    batching = read("serving/batching.config")
    fields = re.findall(r"^(\w+)\s*[{:]", batching, re.M)
    assert set(fields) <= {"max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                           "num_batch_threads", "allowed_batch_sizes",
                           "pad_variable_length_inputs", "thread_pool_name"}
    assert {"max_batch_size", "batch_timeout_micros", "num_batch_threads"} <= set(fields)
    monitoring = read("serving/monitoring.config")
    assert re.search(r"prometheus_config\s*{[^}]*enable:\s*true[^}]*path:\s*\"/monitoring/",
                     monitoring)


@pytest.mark.parametrize("source", ["README.md", "Dockerfile"])
def test_the_docker_run_flags_name_files_that_exist(source):
    text = read(source)
    if source == "README.md":
        command = re.search(r"docker run [^`]*?tensorflow/serving:([\d.]+)([^`]*)", text)
        assert command and command.group(1) == pinned("tensorflow")
        flags = dict(re.findall(r"--(\w+)=(\S+)", command.group(2)))
        mounts = re.findall(r"-v \"\$PWD/(\w+):(/\w+)(?::ro)?\"", command.group(0))
        assert ("export", "/models") in mounts and ("serving", "/config") in mounts
    else:
        serving = stages()["serving"]["steps"]
        cmd = [args for keyword, args in serving if keyword == "CMD"][0]
        flags = dict(re.findall(r'"--(\w+)=([^"]+)"', cmd))
    assert flags["enable_batching"] == "true"
    assert flags["xla_cpu_compilation_enabled"] == "true"   # score_candidates runs on XLA
    assert (flags["rest_api_port"], flags["port"]) == ("8501", "8500")
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        assert flags[flag].startswith("/config/")
        assert os.path.exists(os.path.join(ROOT, "serving", flags[flag].removeprefix("/config/")))
    base_path = model_server_config().model_config_list.config[0].base_path
    assert base_path == f"/models/{MODEL_NAME}"  # = export/<name> mounted or copied at /models
