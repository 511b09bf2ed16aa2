"""The schema: feature specs, serialization round trip, persistence, clear errors."""

import json

import pytest
import tensorflow as tf

from qrec_tf import schema as S


def values(schema, **overrides):
    out = {}
    for f in schema.features:
        fill = f.pad if f.shape else (0 if f.dtype == "int64" else b"")
        out[f.name] = [fill] * f.size if f.shape else fill
    out.update(overrides)
    return out


def test_every_feature_is_named_once_with_its_shape():
    schema = S.Schema(history_length=4, max_queries=3, max_query_words=2, nip_positives=2,
                      nip_negatives=1, query_clicked_items=5)
    names = schema.feature_names
    assert len(names) == len(set(names)) == 23
    assert schema.feature(S.QUERY_WORD_IDS).shape == (3, 2)
    assert schema.feature(S.HIST_ITEM_IDS).vocab == S.VOCAB_ITEMS
    clicked = schema.feature(S.QUERY_CLICKED_ITEM_IDS)
    assert (clicked.shape, clicked.vocab, clicked.group) == ((3, 5), S.VOCAB_ITEMS, "query")
    assert schema.feature(S.DOMAIN).group == "context"
    # The impression's time is a model input (query ages are computed in the graph from it).
    assert schema.feature(S.TIMESTAMP).group == "request"
    assert schema.feature(S.QUERY_TIMESTAMPS).shape == (3,)
    assert schema.feature(S.QUERY_SUBCATEGORY_IDS).vocab == S.VOCAB_SUBCATEGORIES
    assert {f.name for f in schema.model_features} == set(names) - {
        S.LABEL, S.DOMAIN, S.NIP_POS_ITEM_IDS, S.NIP_NEG_ITEM_IDS}
    specs = schema.tensor_specs(batch_size=None)
    assert specs[S.QUERY_KEYS] == tf.TensorSpec((None, 3), tf.string, name=S.QUERY_KEYS)
    with pytest.raises(KeyError, match="no feature named"):
        schema.feature("query")


def test_serialize_parse_round_trip():
    schema = S.Schema(history_length=3, max_queries=2, max_query_words=2, nip_positives=1,
                      nip_negatives=1)
    v = values(schema, **{S.LABEL: 1, S.ITEM_ID: 2**40, S.HIST_ITEM_IDS: [-1, 5, 6],
                          S.QUERY_KEYS: ["", "3_4_5"], S.QUERY_WORD_IDS: [[-1, -1], [3, 4]]})
    parsed = tf.io.parse_example([schema.to_example(v)], schema.parse_spec())
    assert parsed[S.ITEM_ID].numpy().tolist() == [2**40]
    assert parsed[S.HIST_ITEM_IDS].numpy().tolist() == [[-1, 5, 6]]
    assert parsed[S.QUERY_KEYS].numpy().tolist() == [[b"", b"3_4_5"]]
    assert parsed[S.QUERY_WORD_IDS].numpy().tolist() == [[[-1, -1], [3, 4]]]
    with pytest.raises(ValueError, match="hist_item_ids: expected 3 values, got 2"):
        schema.to_example(values(schema, **{S.HIST_ITEM_IDS: [1, 2]}))


def test_serializer_reusing_a_feature_gives_identical_bytes():
    schema = S.Schema(history_length=3, max_queries=2, max_query_words=2, nip_positives=1,
                      nip_negatives=1)
    shared_hist = [-1, 5, 6]
    first = values(schema, **{S.HIST_ITEM_IDS: shared_hist, S.ITEM_ID: 1})
    second = values(schema, **{S.HIST_ITEM_IDS: shared_hist, S.ITEM_ID: 2})
    third = values(schema, **{S.HIST_ITEM_IDS: [7, 8, 9], S.ITEM_ID: 3})
    serializer = S.ExampleSerializer(schema)
    got = [serializer.serialize(v) for v in (first, second, third)]
    assert got == [schema.to_example(v) for v in (first, second, third)]


def test_schema_json_round_trip_and_validation(tmp_path):
    schema = S.Schema(history_length=7)
    assert S.Schema.from_json(schema.to_json()) == schema
    (tmp_path / S.SCHEMA_FILE).write_text(schema.to_json())
    assert S.Schema.load(str(tmp_path)) == schema
    with pytest.raises(ValueError, match="unknown schema fields"):
        S.Schema.from_json('{"history_len": 3, "features": []}')
    with pytest.raises(S.SchemaMismatch, match="older version"):
        S.Schema.from_json('{"history_length": 3}')
    with pytest.raises(ValueError, match="history_length must be a positive integer"):
        S.Schema(history_length=0)
    with pytest.raises(ValueError, match="query_clicked_items must be a positive integer"):
        S.Schema(query_clicked_items=0)
    with pytest.raises(FileNotFoundError, match="build_tfrecords"):
        S.Schema.load(str(tmp_path / "nowhere"))


def test_data_written_with_other_features_is_recognised():
    text = json.loads(S.Schema().to_json())
    assert text["features"][0] == [S.LABEL, "int64", []]
    text["features"] = [f for f in text["features"] if f[0] != S.QUERY_CLICKED_ITEM_IDS]
    with pytest.raises(S.SchemaMismatch, match=rf"missing: \['{S.QUERY_CLICKED_ITEM_IDS}'\]"
                                                r".*run `python -m pipelines.build_tfrecords`"):
        S.Schema.from_json(json.dumps(text))
    text["features"] = [[n, d, [s[0] + 1] if s else s] for n, d, s in json.loads(
        S.Schema().to_json())["features"]]
    with pytest.raises(S.SchemaMismatch, match="other shapes"):
        S.Schema.from_json(json.dumps(text))
