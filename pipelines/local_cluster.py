"""A local Beam "cluster" on the portability framework: a job service and an SDK worker pool.

    python -m pipelines.local_cluster [--job-port P] [--worker-port W]
        [-- python -m pipelines.build_tfrecords --input DIR --output DIR ...]

Dataflow, Flink and Spark run a pipeline through Beam's portability framework: the job is sent as
a proto to a job service, and SDK worker processes (other processes, other machines) unpickle
and run its DoFns. This starts that path on this machine, offline: Beam's local job service and an
external worker pool, both listening on 127.0.0.1 only (free ports unless given). It prints the
pipeline options that send a job to it:

    --runner=PortableRunner --job_endpoint=localhost:P --environment_type=EXTERNAL
    --environment_config=localhost:W --job_server_timeout=604800

(Without the last one a job longer than 5 minutes fails in Beam 2.77's client: its default
--job_server_timeout of 300 s also bounds the stream that waits for the job's end.)

With a command after `--`, it appends those options to the command, runs it, stops the cluster
and exits with the command's status. Without one, it serves until Ctrl-C. Either way both
processes (and the workers they started) are stopped by process group at the end, and the cluster
stops with a clear error when one of its processes dies.

Workers are started by the pool as `python -m ...`: the `python` found on PATH. So the pool gets
this interpreter's bin directory first on PATH (a virtualenv works without activation) and this
checkout first on PYTHONPATH (the workers import the same `pipelines` code as the launcher).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Iterator, Sequence

PROG = "python -m pipelines.local_cluster"
HOST = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT_S = 120.0  # imports on a loaded 2-core machine take tens of seconds


class ClusterError(RuntimeError):
    """The cluster could not start or one of its processes died."""


# Beam 2.77's PortableRunner puts --job_server_timeout (default 300 s) on the stream through
# which it waits for the job's state too: a job longer than that fails in the client with
# DEADLINE_EXCEEDED (measured: build_tfrecords on ~1M rows here).
JOB_SERVER_TIMEOUT_S = 7 * 24 * 3600


def portable_options(job_port: int, worker_port: int) -> list[str]:
    """The pipeline options that run a job on a cluster started with these ports."""
    return ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
            "--environment_type=EXTERNAL", f"--environment_config=localhost:{worker_port}",
            f"--job_server_timeout={JOB_SERVER_TIMEOUT_S}"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def check_port_free(port: int) -> None:
    """Raises ClusterError when something listens on (or holds) HOST:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError as error:
            raise ClusterError(f"port {port} on {HOST} is taken ({error.strerror}): pass another "
                               "one or leave it out for a free port") from None


def is_listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        return s.connect_ex((HOST, port)) == 0


def cluster_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (os.environ) with this interpreter's bin dir first on PATH and this checkout first
    on PYTHONPATH, for the services, their workers and the command."""
    env = dict(os.environ if base is None else base)
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join([bin_dir, *[p for p in env.get("PATH", "").split(os.pathsep)
                                              if p and p != bin_dir]])
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != ROOT]])
    return env


def stop_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminates `process` and everything in its process group, then kills what is left."""
    if process.poll() is None or _group_alive(process.pid):
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(process.pid):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(0.1)
            if not _group_alive(process.pid):
                break
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True  # (an exited leader counts until stop_group's wait() reaps it)


class Service:
    """One cluster process in its own process group, its output in a temporary log file."""

    def __init__(self, name: str, port: int, env: dict[str, str]):
        self.name, self.port = name, port
        self.log = tempfile.NamedTemporaryFile(prefix=f"qrec-{name}-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.local_cluster", "--serve", name, str(port)],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)

    def check(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ClusterError(f"the {self.name} (pid {self.process.pid}, port {self.port}) "
                               f"exited with status {code}; its last output:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip() or "(nothing)"

    def stop(self) -> None:
        stop_group(self.process)
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


@contextlib.contextmanager
def local_cluster(job_port: int = 0, worker_port: int = 0,
                  start_timeout_s: float = START_TIMEOUT_S) -> Iterator["Cluster"]:
    """Starts the job service and the worker pool; yields a Cluster; stops both on exit."""
    for port in (job_port, worker_port):
        if port:
            check_port_free(port)
    job_port = job_port or free_port()
    worker_port = worker_port or free_port()
    if job_port == worker_port:
        raise ClusterError(f"--job-port and --worker-port are both {job_port}")
    env = cluster_env()
    services: list[Service] = []
    try:
        services.append(Service("job-service", job_port, env))
        services.append(Service("worker-pool", worker_port, env))
        deadline = time.monotonic() + start_timeout_s
        for service in services:
            while not is_listening(service.port):
                service.check()
                if time.monotonic() > deadline:
                    raise ClusterError(f"the {service.name} did not listen on port "
                                       f"{service.port} within {start_timeout_s:.0f} s; its "
                                       f"output:\n{service.tail()}")
                time.sleep(0.2)
        yield Cluster(services, portable_options(job_port, worker_port), env)
    finally:
        for service in services:
            service.stop()


class Cluster:
    def __init__(self, services: list[Service], options: list[str], env: dict[str, str]):
        self.services, self.options, self.env = services, options, env

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self.services]

    def check(self) -> None:
        """Raises ClusterError when a cluster process has died."""
        for service in self.services:
            service.check()

    def run(self, command: Sequence[str], timeout_s: float | None = None) -> int:
        """Runs `command` + the portable options in its own process group; its exit status.

        Stops the command (ClusterError) when a cluster process dies meanwhile: a job would
        otherwise wait for its workers forever.
        """
        process = subprocess.Popen([*command, *self.options], env=self.env,
                                   start_new_session=True)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return process.wait(1.0)
                self.check()
                if deadline is not None and time.monotonic() > deadline:
                    raise ClusterError(f"{command[0]} ... ran past {timeout_s:.0f} s")
        finally:
            stop_group(process)


# --- the two services, run in child processes -------------------------------------------------
def _loopback_only() -> None:
    """Makes every gRPC server of this process listen on localhost only.

    Beam's worker pool and the job service's runner bind "[::]:port" (every interface); nothing
    here is meant to be reachable from another machine.
    """
    import grpc

    real_server = grpc.server

    def server(*args, **kwargs):
        created = real_server(*args, **kwargs)
        add_port = created.add_insecure_port
        created.add_insecure_port = lambda address: add_port(
            re.sub(r"^(\[::\]|0\.0\.0\.0)?:(\d+)$", r"localhost:\2", address))
        return created

    grpc.server = server


def serve(name: str, port: int) -> None:
    """Runs one service in this process until it is terminated."""
    import logging
    logging.basicConfig(level=logging.INFO)
    _loopback_only()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if name == "job-service":
        from apache_beam.runners.portability import local_job_service_main
        local_job_service_main.run(["--port", str(port)])
    elif name == "worker-pool":
        from apache_beam.runners.worker import worker_pool_main
        worker_pool_main.main(["--service_port", str(port)])
    else:
        raise SystemExit(f"unknown service {name}")


# --- command line ----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        serve(argv[1], int(argv[2]))
        return 0
    command = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0],
        epilog="Example: python -m pipelines.local_cluster -- python -m pipelines.build_tfrecords"
               " --input DIR --output DIR  (the portable options are appended to the command)")
    parser.add_argument("--job-port", type=int, default=0,
                        help="port of the job service (default: a free one)")
    parser.add_argument("--worker-port", type=int, default=0,
                        help="port of the worker pool (default: a free one)")
    args = parser.parse_args(own)
    if "--" in argv and not command:
        parser.error("nothing after --: give the command to run on the cluster")
    # Ctrl-C (SIGINT) and SIGTERM stop both services, also when this process was started with
    # SIGINT ignored (a background job of a non-interactive shell inherits that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with local_cluster(args.job_port, args.worker_port) as cluster:
            print(f"{PROG}: job service and worker pool running (pids {cluster.pids}); pipeline "
                  f"options:\n  {' '.join(cluster.options)}", file=sys.stderr, flush=True)
            if command:
                return cluster.run(command)
            print(f"{PROG}: Ctrl-C stops both", file=sys.stderr, flush=True)
            while True:
                time.sleep(1.0)
                cluster.check()
    except ClusterError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
