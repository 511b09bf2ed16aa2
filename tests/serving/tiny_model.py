"""One tiny trained and exported QueryRec model per test session, shared by the export and serving
tests (training it once takes ~30 s here; every test reuses it read-only)."""

from __future__ import annotations

import dataclasses
import os

from pipelines import build_tfrecords, synthetic
from qrec_tf import export, train
from qrec_tf.config import load_config

MODEL_NAME = "queryrec"
TINY = ["model.embedding_dim=8", "model.mlp_units=[16]", "model.attention_units=[8]",
        "model.sas_blocks=1", "train.batch_size=128", "train.shuffle_buffer=2000",
        "train.epochs=1"]


@dataclasses.dataclass(frozen=True)
class TinyModel:
    data_dir: str
    model_dir: str
    base_path: str      # <export>/queryrec, holding version 1
    version_dir: str    # <export>/queryrec/1


_cache: dict[str, TinyModel] = {}


def tiny_model(tmp_path_factory) -> TinyModel:
    """Generates a small log, runs the Beam job, trains QueryRec (contrastive and NIP on, so the
    training-only parts exist) for one epoch and exports it; once per session."""
    if "model" not in _cache:
        root = tmp_path_factory.mktemp("tiny_model")
        log, data, model = (str(root / name) for name in ("log", "data", "model"))
        synthetic.generate(log, users=60, items=300, seed=2, rec_per_user=20, sessions_per_user=4)
        build_tfrecords.run(["--input", log, "--output", data, "--direct_running_mode=in_memory"])
        train.train(load_config("configs/queryrec.yaml", TINY), data, model, verbose=0)
        base = str(root / "export" / MODEL_NAME)
        # One candidate bucket in the warmup (8): every server start in the suite replays it, and
        # each bucket is an XLA compilation of 1.5-3 s; the default (13 buckets) is tested alone.
        version_dir = export.export(model, base, warmup_max_candidates=8)
        assert version_dir == os.path.join(base, "1")
        _cache["model"] = TinyModel(data, model, base, version_dir)
    return _cache["model"]
