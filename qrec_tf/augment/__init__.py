"""Diffusion augmentation: query-item vectors -> a trained DDPM -> the contrastive positives table.

    python -m qrec_tf.augment --data DIR --output DIR
        [--config configs/augment/default.yaml] [--verbose auto|0|1|2]
        [--set train.epochs=50 --set data.max_items=20000 ...] [--force]

docs/PAPER.md "Diffusion augmentation". Reads `<data>/query_items/` (the Beam job's table), builds
one vector per query over an item space of N items:
  x_q[i] = r_p (data.positive_value, 0.5) if i was clicked after q,
           r_n (data.negative_value, -0.5) if shown after q and never clicked,
           r_0 (data.neutral_value, 0) otherwise.
A Gaussian diffusion with an MLP denoiser (qrec_tf.layers.diffusion / denoiser, DiffRec's design)
is trained to predict the full x_q from a noised copy in which some positives were masked out
(train.positive_mask_rate), so it learns to fill in missing positives. Then every query gets a row
in the positives table: click-less queries the top-K generated items (output.top_k) excluding
their known negatives; the others their clicks, most clicked first, and with
output.augment_clicked also generated items up to K. When no query needs filling (none is
click-less and output.augment_clicked is off, or no query is below K clicks), the stage writes
the log's clicks as the table and trains nothing, unless --force (train.force).

Departures from DiffRec's DNN, measured with the quality check below (docs/RESULTS.md): the
denoiser adds a learned per-item skip of x_t (model.residual: without it the MLP spends itself
copying the visible entries; Recall@10 0.04 -> 0.30 on a generated 2,000-user log), and reads
clicks and shown-not-clicked items as separate inputs (model.split_signs: both point to the
query's topic, which one weight per item cannot express; equal on that log, Recall@5 0.44 ->
0.69 on the tests' planted data). DiffRec's input dropout (model.dropout 0.5; 0.24 without) is
kept; SNR reweighting lowered recall (0.24) and is off.

Writes into --output:
  positives/*.tfrecord.gz   the table (qrec_tf.positives.POSITIVES_SPEC); training reads it from
                            model.positives_dir (default <data>/positives: use --output <data>)
  augment_summary.json      counts, what was left outside the item space, the quality check,
                            loss history, timings and peak memory
  augment_config.yaml       the resolved config
  diffusion.weights.h5      the trained denoiser
  checkpoints/              exists while training, saved at the end of an epoch at most every
                            train.checkpoint_seconds (60); a killed run started again resumes
                            from its last checkpoint (and ends with the table an unbroken run
                            writes)

Item space. Search logs show millions of items (KuaiSAR: 2-4M), and the model is |items| wide on
both ends, so x_q is restricted to the N = data.max_items items shown after the most distinct
queries ("most exposed"; ties: more clicks, then smaller id) that are also in the CTR model's item
vocabulary (vocab/items.txt; other items could not be used as positives). Entries and items
outside the space are counted in the summary. Memory, with E = model.step_embedding_dim,
H = model.hidden_units (h_1 .. h_k), B = train.batch_size, Z = in-space query-item pairs,
Q = queries, T = model.steps, S = 2 with model.split_signs (else 1):
  parameters   P = (S N + E) h_1 + sum_j h_j h_{j+1} + h_k N + E^2 + sum_j h_j + N + E
               (+ 2 N with model.residual); ~ (S + 1) N h_1 for one hidden layer
  training     16 P bytes (weights, gradients, Adam's two moments; float32)
               + ~8 B N float32 per step (target, input, noise, x_t, prediction, gradients)
  data         ~13 Z + 8 Q bytes (column int32, value float32, click count int32, flag) in RAM
  generation   ~(4 + T) B' N float32 per batch of B' queries: output.batch_size, lowered to fit
               output.batch_memory_mb (1 GiB); only the top-K indices of each query are kept
With N = 20,000, H = [256], split signs: P = 15.4M -> 0.25 GB, + 0.08 GB per step (B = 128).
The summary holds this estimate and the measured peak resident memory (getrusage ru_maxrss) of
the process, which includes TensorFlow's own ~0.6 GB.

Quality check (independent of the CTR model): output.holdout_fraction of the queries with clicks
have half of their in-space clicks (at least one) hidden and are left out of training, like the
click-less queries the model fills. The check ranks items for them from what is left (excluding
the items still visible) and reports Recall@K and NDCG@K (K = output.quality_k) of the diffusion
model and of global click popularity. The table still lists every click of these queries.

Latent diffusion (model.latent: true; L-DiffRec): for item spaces of millions, items are split
into groups by first-level category (`<data>/item_categories.tsv`; items without one hashed into
model.latent_hash_groups groups), each group's slice of x_q is encoded to model.latent_dim units,
the diffusion runs in the concatenated latent space and per-group linear decoders score the
items. No item cap (data.max_items is not used); memory ~ 12 (S + 1) N d bytes plus the
denoiser's, no [batch, N] tensor while training. Formula and details in `latent`.

Modules: `config` (the YAML sections), `vectors` (the query -> items table, the item space, x_q
as CSR rows and DenseRows), `training` (DiffusionTrainer, the memory estimate), `grouping` (item
groups of the latent model), `latent` (the latent trainer, scores and memory estimate),
`generation` (top-K items, the positives table), `quality` (the check above), `stage` (`run`:
the stage end to end), `cli` (`main`). Everything is importable from `qrec_tf.augment` itself.
"""

from qrec_tf.augment.cli import main
from qrec_tf.augment.config import (
    SECTIONS,
    AugmentConfig,
    AugmentDataConfig,
    AugmentModelConfig,
    AugmentOutputConfig,
    AugmentTrainConfig,
    load_augment_config,
)
from qrec_tf.augment.generation import (
    ItemScores,
    batch_size_for,
    dense_item_scores,
    generation_batch_size,
    positives_table,
    rank_items,
    top_k_in_batches,
)
from qrec_tf.augment.grouping import (
    ItemGroups,
    group_items,
    hash_groups,
    kmeans,
    read_item_embeddings,
    read_item_groups,
)
from qrec_tf.augment.latent import (
    FusedLazyAdam,
    LatentDiffusionTrainer,
    build_latent_diffusion,
    build_latent_trainer,
    latent_generation_batch_size,
    latent_item_scores,
    latent_memory_estimate_mb,
    latent_parameter_count,
)
from qrec_tf.augment.quality import (
    below_popularity,
    popularity_ranking,
    quality_check,
    ranking_quality,
)
from qrec_tf.augment.stage import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    SUMMARY_FILE,
    WEIGHTS_FILE,
    queries_to_fill,
    run,
)
from qrec_tf.augment.training import (
    DiffusionTrainer,
    SparseBackup,
    build_diffusion,
    build_trainer,
    memory_estimate_mb,
    parameter_count,
)
from qrec_tf.augment.vectors import (
    DenseRows,
    ItemSpace,
    QueryItemMatrix,
    QueryItemTable,
    build_matrix,
    choose_item_space,
    hold_out,
    read_query_items,
)

__all__ = [
    "SECTIONS", "AugmentConfig", "AugmentDataConfig", "AugmentModelConfig",
    "AugmentOutputConfig", "AugmentTrainConfig", "load_augment_config",
    "QueryItemTable", "read_query_items", "ItemSpace", "choose_item_space", "QueryItemMatrix",
    "build_matrix", "hold_out", "DenseRows",
    "DiffusionTrainer", "SparseBackup", "build_diffusion", "build_trainer",
    "parameter_count", "memory_estimate_mb",
    "top_k_in_batches", "batch_size_for", "generation_batch_size", "ItemScores",
    "dense_item_scores", "rank_items", "positives_table",
    "ItemGroups", "group_items", "hash_groups", "kmeans", "read_item_embeddings",
    "read_item_groups",
    "FusedLazyAdam", "LatentDiffusionTrainer", "build_latent_diffusion", "build_latent_trainer",
    "latent_generation_batch_size", "latent_item_scores", "latent_memory_estimate_mb",
    "latent_parameter_count",
    "ranking_quality", "popularity_ranking", "quality_check", "below_popularity",
    "SUMMARY_FILE", "CONFIG_FILE", "WEIGHTS_FILE", "CHECKPOINT_DIR", "queries_to_fill", "run",
    "main",
]
