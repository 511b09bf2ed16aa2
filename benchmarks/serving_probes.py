"""What benchmarks/serving_load.py measures besides the load itself: the kernel's listen
overflows, a process' CPU time split into its Python and TensorFlow pool threads, and the
signature's cost per call against the batch size in process (batch_curve)."""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import tensorflow as tf

from qrec_tf import export


def listen_overflows() -> int:
    """The kernel's TcpExtListenOverflows (connections dropped at a full accept queue)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table.get("ListenOverflows", 0))
    return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds of process `pid`, those of its TensorFlow pool threads `tf_*`): the rest is
    the Python threads (HTTP, JSON, checks, the eager dispatch of the signature call). Threads
    that ended still count in the first (the process' own total)."""
    tick = os.sysconf("SC_CLK_TCK")

    def ticks(path):
        with open(path) as f:  # comm may hold spaces: the fields after its ")"
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime

    pool = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                if f.read().startswith("tf_"):
                    pool += ticks(f"/proc/{pid}/task/{task}/stat")
        except OSError:  # the thread ended meanwhile
            continue
    return ticks(f"/proc/{pid}/stat") / tick, pool / tick


def newest_version(base: str) -> str:
    return os.path.join(base, str(export.existing_versions(base)[-1]))


def batch_curve(base: str, requests: dict[str, tuple[bytes, int]], threads: int) -> list[dict]:
    """In process, no HTTP: the served signature's time per call when U copies of a workload's
    request (`requests`: serving_load.bodies) are one call, U = 1..64, and the model-only throughput
    of U = 1 on 8 threads (the unbatched server's --rest_api_num_threads) against U = 32 on
    `threads` threads (num_batch_threads): what batching can gain before any front-end cost."""
    from serving.local_server.validation import rest_request
    from serving.local_server.versions import ServedVersion

    served = ServedVersion(newest_version(base), 0)
    served.warm_up()
    rows = []
    for name, (body, n) in requests.items():
        signature, tensors, _ = rest_request(json.loads(body), served)
        arrays = {k: v.numpy() for k, v in tensors.items()}

        def batch(users):
            return {k: tf.constant(np.concatenate([a] * users)) for k, a in arrays.items()}

        for users in (1, 2, 4, 8, 16, 32, 64):
            merged = batch(users)
            for _ in range(3):  # the first call of a new shape compiles
                served.run(signature, merged)
            times, began_cpu = [], time.process_time()
            for _ in range(20):
                began = time.perf_counter()
                served.run(signature, merged)
                times.append(time.perf_counter() - began)
            # Process CPU per call (every thread, TensorFlow's pools too): unlike the wall
            # time, it does not grow when other processes take the cores.
            cpu = (time.process_time() - began_cpu) / 20 * 1e3
            ms = float(np.median(times) * 1e3)
            rows.append({"workload": name, "requests": users, "ms_per_call": ms,
                         "ms_per_request": ms / users, "cpu_ms_per_call": cpu,
                         "cpu_ms_per_request": cpu / users})
            print(rows[-1], flush=True)
        for users, count in ((1, 8), (32, threads)):
            merged, done, stop = batch(users), [0] * count, threading.Event()

            def work(i, merged=merged, done=done, stop=stop):
                while not stop.is_set():
                    served.run(signature, merged)
                    done[i] += 1

            workers = [threading.Thread(target=work, args=(i,)) for i in range(count)]
            began = time.perf_counter()
            for worker in workers:
                worker.start()
            time.sleep(5)
            stop.set()
            for worker in workers:
                worker.join()
            rows.append({"workload": name, "requests": users, "threads": count,
                         "candidates_per_s": sum(done) * users * n
                         / (time.perf_counter() - began)})
            print(rows[-1], flush=True)
    return rows
