"""A small generated log through the Beam job, shared by the training, tuning and comparison
tests (the `data_dir` fixture)."""

import pytest

from pipelines import build_tfrecords, synthetic


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    synthetic.generate(str(root / "log"), users=150, items=600, seed=2, rec_per_user=30,
                       sessions_per_user=6)
    build_tfrecords.run(["--input", str(root / "log"), "--output", str(root / "data"),
                         "--direct_running_mode=in_memory", "--search-examples"])
    return str(root / "data")
