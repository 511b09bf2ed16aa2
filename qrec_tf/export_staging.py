"""The export's staging directories: a version is written into a hidden, locked `.export-*`
directory under the base path and renamed into place only when complete, so TF Serving never
sees half a version; a killed export's leftovers are told from a live one's by the lock."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time

LOG = logging.getLogger("qrec_tf.export")

STAGING_PREFIX = ".export-"
STALE_STAGING_SECONDS = 60  # an unlocked staging directory this old belongs to no live export


@contextlib.contextmanager
def staging_directory(output: str):
    """A new hidden `.export-*` directory under `output`, locked (flock on the directory) while
    the export that writes it runs: the kernel drops the lock when that process ends, killed or
    not, so `remove_stale_staging` can tell a dead export's leftovers from a live one's. The
    lock follows the directory when it is renamed into a version."""
    path = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)  # releases the lock
        if os.path.exists(path):
            shutil.rmtree(path, ignore_errors=True)


def remove_stale_staging(output: str, min_age_seconds: float = STALE_STAGING_SECONDS
                         ) -> list[str]:
    """Removes the `.export-*` directories under `output` that no live export holds (a killed
    export's) and that are at least `min_age_seconds` old (a starting export locks its
    directory right after creating it); returns their paths."""
    removed = []
    if not os.path.isdir(output):
        return removed
    now = time.time()
    for name in sorted(os.listdir(output)):
        path = os.path.join(output, name)
        if not name.startswith(STAGING_PREFIX) or not os.path.isdir(path):
            continue
        try:
            if now - os.stat(path).st_mtime < min_age_seconds:
                continue
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # gone meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live export holds it
            os.close(fd)
            continue
        try:
            shutil.rmtree(path)
            removed.append(path)
            LOG.info("removed %s, left by an export that did not finish", path)
        except OSError as error:
            LOG.warning("could not remove %s: %s", path, error)
        finally:
            os.close(fd)
    return removed
