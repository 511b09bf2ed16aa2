"""RecordingFeatures: reads by key and by iteration are recorded, membership tests are not."""

from qrec_tf.models.recording_features import RecordingFeatures


def test_reads_are_recorded_and_membership_is_not():
    read = set()
    features = RecordingFeatures({"a": 1, "b": 2, "c": 3}, read)
    assert "b" in features and len(features) == 3
    assert read == set()
    assert features["a"] == 1 and features.get("c") == 3
    assert read == {"a", "c"}
    assert sorted(features) == ["a", "b", "c"]
    assert read == {"a", "b", "c"}
