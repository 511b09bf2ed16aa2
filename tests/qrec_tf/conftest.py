"""A small generated log through the Beam job, shared by the training, tuning and comparison
tests (the `data_dir` fixture); `generated_data` builds variants of it."""

import pytest

from pipelines import build_tfrecords, synthetic


def generated_data(root, seed: int, rec_per_user: int, sessions_per_user: int,
                   *beam_args: str) -> str:
    """A 150-user generated log through the Beam job (with the search examples) under `root`;
    returns the data directory."""
    synthetic.generate(str(root / "log"), users=150, items=600, seed=seed,
                       rec_per_user=rec_per_user, sessions_per_user=sessions_per_user)
    build_tfrecords.run(["--input", str(root / "log"), "--output", str(root / "data"),
                         "--direct_running_mode=in_memory", "--search-examples", *beam_args])
    return str(root / "data")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return generated_data(tmp_path_factory.mktemp("train_data"), 2, 30, 6)
