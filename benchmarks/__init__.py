"""Scripts that measure the project and write tables into docs/RESULTS.md.

Run each as a module from the repository root, e.g. `python -m benchmarks.ablation`, so that the
project's packages import without a path hack. TensorFlow's C++ log level is set here, before any
benchmark imports TensorFlow (a caller's own setting wins).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
