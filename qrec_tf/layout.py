"""The data directory: every name under `pipelines.build_tfrecords --output <data>` and what
`python -m qrec_tf.augment --output <data>` adds there. Its names live here only.

Dependency-free (the standard library alone), so the Beam jobs in `pipelines/` import it without
loading TensorFlow or model code (docs/ARCHITECTURE.md, "Packages and what each may import").

    <data>/
      schema.json            SCHEMA_FILE        sequence lengths, features, lineage
      train/ valid/ test/    SPLITS             gzip TFRecord shards (EXAMPLE_FILE_PATTERN)
      search_train/          SEARCH_TRAIN       search impressions (--search-examples)
      vocab/<name>.txt       VOCAB_DIR          "value<TAB>count", most frequent first
      query_items/           QUERY_ITEMS_DIR    the query -> items table
      stats.json             STATS_FILE         row counts; examples and CTR per split
      item_categories.tsv    ITEM_CATEGORIES_FILE  item -> category, sub-category, author
      dead_letter/           DEAD_LETTER_DIR    every rejected line
      positives/             POSITIVES_DIR      the augment stage's positives table
      augment_summary.json   AUGMENT_SUMMARY_FILE   }
      augment_config.yaml    AUGMENT_CONFIG_FILE    } the augment stage's other outputs
      diffusion.weights.h5   AUGMENT_WEIGHTS_FILE   } (AUGMENT_OUTPUTS: derived from one
      checkpoints/           AUGMENT_CHECKPOINT_DIR } build, so a new build removes them)
"""

from __future__ import annotations

import os

# --- written by the Beam job (pipelines.build_tfrecords) -------------------------------------
SCHEMA_FILE = "schema.json"
STATS_FILE = "stats.json"
SPLITS = ("train", "valid", "test")
# Search impressions as training examples (`build_tfrecords --search-examples`): a directory of
# its own, so that only a model that asks for them (PLE) ever reads them.
SEARCH_TRAIN = "search_train"
EXAMPLE_SPLITS = (*SPLITS, SEARCH_TRAIN)
VOCAB_DIR = "vocab"
QUERY_ITEMS_DIR = "query_items"
DEAD_LETTER_DIR = "dead_letter"
# One line per item_features row: "item_id<TAB>category<TAB>sub-category<TAB>author" (raw ids,
# PAD_ID for a missing one), in no particular order: how a model places an item it knows only by
# id (a query's clicked item).
ITEM_CATEGORIES_FILE = "item_categories.tsv"
EXAMPLE_FILE_PATTERN = "*.tfrecord.gz"
COMPRESSION = "GZIP"

# --- written by the augment stage (qrec_tf.augment --output DIR; DIR is <data> by default) ---
POSITIVES_DIR = "positives"
AUGMENT_SUMMARY_FILE = "augment_summary.json"
AUGMENT_CONFIG_FILE = "augment_config.yaml"
AUGMENT_WEIGHTS_FILE = "diffusion.weights.h5"
AUGMENT_CHECKPOINT_DIR = "checkpoints"     # exists while the stage trains
AUGMENT_OUTPUTS = (POSITIVES_DIR, AUGMENT_SUMMARY_FILE, AUGMENT_CONFIG_FILE,
                   AUGMENT_WEIGHTS_FILE, AUGMENT_CHECKPOINT_DIR)


def schema_path(data_dir: str) -> str:
    return os.path.join(data_dir, SCHEMA_FILE)


def stats_path(data_dir: str) -> str:
    return os.path.join(data_dir, STATS_FILE)


def vocab_path(data_dir: str, vocab: str) -> str:
    return os.path.join(data_dir, VOCAB_DIR, vocab + ".txt")


def split_pattern(data_dir: str, split: str) -> str:
    """The glob of one split's (or search_train/'s) shards."""
    return os.path.join(data_dir, split, EXAMPLE_FILE_PATTERN)


def query_items_pattern(data_dir: str) -> str:
    return os.path.join(data_dir, QUERY_ITEMS_DIR, EXAMPLE_FILE_PATTERN)


def item_categories_path(data_dir: str) -> str:
    return os.path.join(data_dir, ITEM_CATEGORIES_FILE)


def positives_dir(output_dir: str) -> str:
    """Where the augment stage writes its table under its --output directory."""
    return os.path.join(output_dir, POSITIVES_DIR)
