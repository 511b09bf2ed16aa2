"""train.deterministic: two runs with the same seed, data and machine end with the same weights.

Each run is its own process: TensorFlow's op determinism is a process-wide switch that would
change every later test of this process."""

import os
import subprocess
import sys

import numpy as np
import pytest

from qrec_tf import evaluate

TINY = ["model.embedding_dim=8", "model.mlp_units=[16]", "model.attention_units=[8]",
        "train.batch_size=128", "train.shuffle_buffer=2000",
        "train.epochs=1", "train.deterministic=true"]


def train_in_a_new_process(data_dir: str, model_dir: str) -> None:
    command = [sys.executable, "-m", "qrec_tf.train", "--config", "configs/queryrec.yaml",
               "--data", data_dir, "--model-dir", model_dir, "--verbose", "0"]
    for override in TINY:
        command += ["--set", override]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_deterministic_runs_give_the_same_weights(data_dir, tmp_path):
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    for model_dir in runs:
        train_in_a_new_process(data_dir, model_dir)
    weights = []
    for model_dir in runs:
        _, model = evaluate.load_trained_model(model_dir, data_dir)
        weights.append([v.numpy() for v in model.trainable_variables])
    assert len(weights[0]) == len(weights[1]) > 10
    for first, second in zip(*weights):
        np.testing.assert_array_equal(first, second)
