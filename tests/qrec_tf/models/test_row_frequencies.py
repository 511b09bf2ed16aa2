"""models/row_frequencies.py: n_j of the mini-batch aware L2 as the number of examples whose
penalised inputs hold row j, against a count by hand."""

import numpy as np
import pytest

from qrec_tf import schema as S
from qrec_tf.config import load_config
from qrec_tf.models import row_frequencies
from qrec_tf.models.registry import MODELS
from qrec_tf.testing import random_batch, random_data_constants

from .test_queryrec import SCHEMA, TINY, VOCABS

ROWS = [*TINY, "model.embedding_l2=0.1", "model.embedding_l2_counts=rows"]


def test_each_row_counts_the_examples_that_hold_it_once_per_example():
    config = load_config("configs/queryrec.yaml", ROWS).model
    model = MODELS["queryrec"][0](config, SCHEMA, VOCABS, name="m",
                                  **random_data_constants(config, VOCABS))
    batches = [random_batch(SCHEMA, VOCABS, size, np.random.default_rng(seed))[0]
               for seed, size in ((0, 7), (1, 5))]
    model(batches[0], training=False)
    counted = row_frequencies.count_example_rows(model, batches)
    # The NIP targets are not penalised, the query features are (queryrec reads them).
    assert S.QUERY_KEYS in model.penalised_features(S.VOCAB_QUERIES)
    assert S.NIP_POS_ITEM_IDS not in model.penalised_features(S.VOCAB_ITEMS)
    assert set(counted) == {vocab for vocab in model.embedding_tables()
                            if model.penalised_features(vocab)}
    for vocab, counts in counted.items():
        expected = np.zeros(len(counts), np.int64)
        for features in batches:
            rows = np.concatenate([
                model.lookup(name, features[name]).numpy().reshape(
                    len(features[S.USER_ID]), -1)
                for name in model.penalised_features(vocab)], axis=1)
            for example in rows:
                expected[np.unique(example)] += 1
        np.testing.assert_array_equal(counts, expected, err_msg=vocab)
    # A history holds an item many times and its padding always: one per example.
    assert counted[S.VOCAB_ITEMS][0] <= 12


def test_inverse_frequencies_skip_padding_oov_and_unheld_rows():
    inverse = row_frequencies.inverse_frequencies(np.array([9, 4, 2, 0, 5]))
    np.testing.assert_allclose(inverse, [0.0, 0.0, 0.5, 0.0, 0.2])
    assert inverse.dtype == np.float32


def test_the_config_key_is_checked():
    with pytest.raises(ValueError, match="embedding_l2_counts must be vocab or rows"):
        load_config("configs/din.yaml", ["model.embedding_l2_counts=sessions"])
