"""benchmarks/serving_load.py on a tiny setting (the tiny export, 1 and 2 clients, half a second
per cell, batching off and on): every cell answers, without errors or resets. No timing is
asserted: the full table is in docs/RESULTS.md."""

import json

import pytest

from benchmarks import serving_load
from tests.serving.tiny_model import tiny_model


@pytest.mark.slow
def test_serving_load_runs_every_cell_without_errors(tmp_path_factory, tmp_path):
    tiny = tiny_model(tmp_path_factory)
    out = tmp_path / "load.json"
    assert serving_load.main(["--export", tiny.base_path, "--data", tiny.data_dir,
                              "--clients", "1,2", "--seconds", "0.5", "--workloads",
                              "predict,score100", "--batching", "off,on",
                              "--json", str(out)]) == 0
    cells = json.loads(out.read_text())["cells"]
    # The modes alternate cell by cell (the machine's drift falls on both alike).
    assert [(c["batching"], c["workload"], c["clients"]) for c in cells] == [
        (b, w, n) for w in ("predict", "score100") for n in (1, 2) for b in ("off", "on")]
    assert all(c["answered"] > 0 and c["errors"] == 0 and c["resets"] == 0 for c in cells)
    # The batch statistics come from the server's metrics: none without batching; with it,
    # every answered request went through a batch of at least one request.
    for c in cells:
        if c["batching"] == "off":
            assert c["batches"] == 0
        else:
            assert 0 < c["batches"] and c["mean_batch"] >= 1


def test_batching_modes_are_parsed_and_checked(tmp_path):
    config = tmp_path / "b.config"
    config.write_text("num_batch_threads { value: 1 }\n")
    assert serving_load.parse_modes(f"off,on,on:{config}") == {
        "off": None, "on": "serving/batching.config", "on:b.config": str(config)}
    with pytest.raises(ValueError, match="on:PATH"):
        serving_load.parse_modes("on:/no/such.config")
