"""TF Serving's rule for version directory names, shared by the export and the local server.

TF Serving (`ParseVersionNumber`, strings::safe_strto64) takes a directory under the base path
as a version when its whole name is an int64: ASCII digits only (`٥`, an Arabic-Indic five, is
a digit to Python's `str.isdigit` and `\\d`, not to TF Serving), at most 2**63 - 1. A larger
number cannot be a version: TF Serving skips it, and a gRPC model_spec (an Int64Value) could not
name it.
"""

from __future__ import annotations

import re

MAX_VERSION = 2 ** 63 - 1
_ASCII_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def parse_version(name: str) -> int | None:
    """A directory name -> its version number, or None when TF Serving would not take it as one
    (not all ASCII digits, or past int64)."""
    if not _ASCII_DIGITS.fullmatch(name):
        return None
    version = int(name)
    return version if version <= MAX_VERSION else None


def check_version(version: int) -> int:
    """A version number asked for by a user -> itself, or ValueError with the rule."""
    if not 1 <= version <= MAX_VERSION:
        raise ValueError(f"version must be an integer in [1, 2**63 - 1] (TF Serving's int64 "
                         f"versions), got {version}")
    return version
