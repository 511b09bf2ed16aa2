"""benchmarks.latent_step: its two read paths train the same model identically, and it prints
a row per case."""

import numpy as np

from benchmarks import latent_step


def test_gather_and_whole_read_steps_agree():
    gather = latent_step.make_step(800, "gather")
    whole = latent_step.make_step(800, "whole-read")
    # Both were traced and stepped twice from the same seed: the next losses match.
    for _ in range(2):
        np.testing.assert_allclose(float(gather()), float(whole()), rtol=1e-5)


def test_main_prints_a_row_per_case(capsys):
    assert latent_step.main(["--items", "800", "--reads", "gather", "--turns", "1",
                             "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "turn 1/1: 800 gather" in out
    assert "| 800 | gather |" in out and out.rstrip().endswith("| 1.00 |")
