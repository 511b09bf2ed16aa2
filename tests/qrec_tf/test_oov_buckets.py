"""model.oov_buckets: unseen ids hashed into rows after the vocabulary, inside the graph."""

import dataclasses

import numpy as np
import tensorflow as tf

from qrec_tf import schema as S
from qrec_tf.config import ModelConfig
from qrec_tf.layers.id_lookup import OOV_INDEX, bucketed, make_lookup, values_end
from qrec_tf.models import registry  # noqa: F401 (registers the model names)
from qrec_tf.models.din import DINModel
from qrec_tf.testing import random_batch, random_vocabularies


def test_two_unseen_ids_can_get_different_rows_and_one_id_always_the_same():
    values = [10, 11, 12]
    lookup = make_lookup(values, "int64", "lookup_test")
    end = values_end(values)
    assert end == 5   # padding, OOV, 3 values
    raw = tf.constant([[-1, 10, 12, 7, 8], [7, 999_999, 8, 11, 7]], tf.int64)
    rows = bucketed(lookup(raw), raw, end, 16).numpy()
    # padding and vocabulary values as without buckets
    assert rows[0, :3].tolist() == [0, 2, 4] and rows[1, 3] == 3
    unseen = {7: rows[0, 3], 8: rows[0, 4], 999_999: rows[1, 1]}
    assert all(end <= r < end + 16 for r in unseen.values())
    assert len(set(unseen.values())) > 1                       # not all one row
    assert rows[1, 0] == rows[1, 4] == rows[0, 3] == unseen[7]  # the same id, the same row
    assert rows[1, 2] == unseen[8]
    # the row is the farmhash of the id's decimal text: the same in any graph, any process
    expected = tf.strings.to_hash_bucket_fast(tf.constant(["7", "8", "999999"]), 16).numpy()
    assert [unseen[7], unseen[8], unseen[999_999]] == (end + expected).tolist()
    # strings (query keys) too; without buckets every unseen value is the one OOV row
    keys = make_lookup(["1_2", "3"], "string", "lookup_keys")
    raw_keys = tf.constant(["", "3", "9_9", "8_8_8", "9_9"])
    key_rows = bucketed(keys(raw_keys), raw_keys, 4, 64).numpy()
    assert key_rows[:2].tolist() == [0, 3] and key_rows[2] == key_rows[4] >= 4
    assert bucketed(keys(raw_keys), raw_keys, 4, 0).numpy().tolist() == [0, 3, 1, 1, 1]


def _model(buckets: int) -> DINModel:
    vocabularies = dataclasses.replace(random_vocabularies(50, 40), oov_buckets=buckets)
    config = ModelConfig(name="din", embedding_dim=4, mlp_units=[8], attention_units=[8],
                         oov_buckets=buckets)
    model = DINModel(config, S.Schema(), vocabularies)
    model(S.Schema().padding_batch(), training=False)
    return model


def test_a_model_with_buckets_has_the_rows_and_scores_unseen_ids_by_their_bucket():
    model = _model(8)
    tables = model.embedding_tables()
    vocab = model.vocabularies
    for name, table in tables.items():
        assert table.shape[0] == values_end(vocab.values[name]) + 8, name
    batch, _ = random_batch(model.schema, vocab, 6, np.random.default_rng(0))
    batch = {k: tf.constant(v) for k, v in batch.items()}
    unseen = dict(batch)
    unseen[S.USER_ID] = tf.constant([5_000_001, 5_000_002, 5_000_003, 5_000_004, 5_000_001,
                                     5_000_001], tf.int64)
    idx = model.lookup(S.USER_ID, unseen[S.USER_ID]).numpy()
    assert (idx >= vocab.values_end(S.VOCAB_USERS)).all() and idx[0] == idx[4] == idx[5]
    assert len(set(idx.tolist())) > 1
    # the score of an unseen user follows its bucket's row: changing only that row moves it
    table = tables[S.VOCAB_USERS]
    before = model(unseen, training=False).numpy()
    row = int(idx[0])
    table.assign(tf.tensor_scatter_nd_update(table, [[row]], [tf.ones([4]) * 3.0]))
    after = model(unseen, training=False).numpy()
    moved = np.abs(after - before) > 1e-7
    assert moved[[0, 4, 5]].all()
    assert not moved[idx != row].any()
    assert model.unbucketed(S.VOCAB_USERS, tf.constant([2, row], tf.int64)).numpy().tolist() \
        == [2, OOV_INDEX]
