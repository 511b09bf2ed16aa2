"""The contrastive positives table: from the search log, aligned with the lookups' indices."""

import numpy as np
import pytest

from pipelines import build_tfrecords
from qrec_tf import positives
from qrec_tf.config import load_config
from qrec_tf.layers.id_lookup import make_lookup
from tests.pipelines import hand_log


@pytest.fixture(scope="module")
def hand_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pos")
    hand_log.write(root / "in")
    build_tfrecords.run(["--input", str(root / "in"), "--output", str(root / "out"),
                         "--direct_running_mode=in_memory"])
    return str(root / "out")


def test_log_positives_are_clicked_items_most_clicked_first(hand_data):
    # hand_log: after "7_8" item 201 was clicked twice, 204 once; "9_3_4" and "5" never
    assert positives.log_positives(hand_data) == {"7_8": [201, 204], "9_3_4": [], "5": []}
    table, source = positives.load(hand_data, "auto")
    assert source == "log" and table["7_8"] == [201, 204]
    with pytest.raises(FileNotFoundError, match="run `python -m qrec_tf.augment --data"):
        positives.load(hand_data, "diffusion")


def test_written_table_round_trips_and_is_found_by_positives_dir(hand_data, tmp_path):
    table = {"7_8": [201, 204, 999], "5": [], "9_3_4": [11]}
    path = positives.write(table, str(tmp_path))
    assert path == str(tmp_path / positives.POSITIVES_DIR / "positives-00000-of-00001.tfrecord.gz")
    assert positives.load(hand_data, "diffusion", str(tmp_path / positives.POSITIVES_DIR)) == (
        table, "diffusion")
    # the augment --output directory itself works too; "auto" prefers the table over the log
    assert positives.load(hand_data, "auto", str(tmp_path)) == (table, "diffusion")
    assert positives.load(hand_data, "log", str(tmp_path))[1] == "log"
    # writing again replaces the table and leaves one shard, no temporary file
    positives.write({"5": [3]}, str(tmp_path))
    assert positives.diffusion_positives(hand_data, str(tmp_path)) == {"5": [3]}
    assert sorted(p.name for p in (tmp_path / positives.POSITIVES_DIR).iterdir()) == [
        "positives-00000-of-00001.tfrecord.gz"]
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "elsewhere")):
        positives.load(hand_data, "diffusion", str(tmp_path / "elsewhere"))


def test_positives_dir_is_validated():
    with pytest.raises(ValueError, match="model.din.positives_dir"):
        load_config("configs/din_con.yaml", ["model.positives_dir=/tmp/x"])   # positives: log
    with pytest.raises(ValueError, match="non-empty path"):
        load_config("configs/din_con_diffusion.yaml", ["model.positives_dir=''"])
    config = load_config("configs/din_con_diffusion.yaml", ["model.positives_dir=/tmp/x"])
    assert config.model.din.positives_dir == "/tmp/x"
    assert load_config("configs/din_con_diffusion.yaml").model.din.positives_dir is None


def test_matrix_rows_follow_the_query_lookup_and_items_the_item_lookup():
    queries, items = ["7_8", "5"], [204, 201, 11]
    matrix = positives.positives_matrix({"7_8": [201, 204, 999], "5": []}, queries, items, k=3)
    query_lookup = make_lookup(queries, "string", "q")
    item_lookup = make_lookup(items, "int64", "i")
    row = int(query_lookup(np.array(["7_8"]))[0])
    assert matrix.shape == (4, 3)
    # 999 is not in the item vocabulary: skipped, the row is padded with 0
    assert matrix[row].tolist() == [int(item_lookup(np.array([201]))[0]),
                                    int(item_lookup(np.array([204]))[0]), 0]
    assert matrix[int(query_lookup(np.array(["5"]))[0])].tolist() == [0, 0, 0]
    assert matrix[0].tolist() == matrix[1].tolist() == [0, 0, 0]  # padding and OOV rows


def test_lookup_maps_padding_oov_and_vocabulary():
    lookup = make_lookup([7, 9], "int64", "ids")
    assert lookup(np.array([-1, 7, 9, 5])).numpy().tolist() == [0, 2, 3, 1]
    empty = make_lookup([], "string", "none")
    assert empty(np.array(["", "x"])).numpy().tolist() == [0, 1]
