"""Predict: class maps of whole scenes, tile by tile, with the pixels ingestion would cut patches around.

Fast tests drive the tiling, masking and outputs with a numpy stand-in for the model's map signature (the same
contract: raw tile in, probabilities of every window out) on tiny scenes whose answer is known; the slow ones map
scenes with the model the shared end-to-end run pushed, against its own serving signature.
"""
import glob
import json
import math
import os
import sys

import numpy as np
import pytest
import rasterio
from numpy.lib.stride_tricks import sliding_window_view
from tiny_scenes import REFERENCE_CRS, SIZE, reference_transform, truth, write_scene

from components.patches import encode_examples, extract_patches, window_valid
from components.scenes import SceneError, load_scene
from foundation.config import TEST, Config
from foundation.published import (MAP_INPUT, MAP_SIGNATURE, PROBABILITIES, SERVING_SIGNATURE,
                                  write_training_record)
from foundation.scene_folder import LABELS_FILE, MULTISPECTRAL_FILE, span_folder
from pipeline.component_ids import SCENE_EXAMPLE_GEN, TRAINER
from pipeline.predict import (CLASSES_TAG, CONFIDENCE, MAP_SUFFIX, NODATA, PROBABILITIES_SUFFIX, RECALL_SUFFIX,
                              MapModel, PredictError, class_colours, load_map_model, predict_scene, predict_scenes,
                              scene_dirs_of_span)
from synth.scenes import generate_sample
from transforms.features import COL, LABEL, ROW, SCENE_ID, layout, raw_feature_spec

CONFIG = Config()
P = CONFIG.ingest.patch_size
HALF = P // 2
FEATURES = len(layout(CONFIG).stream_features)
# Holes in the LiDAR (rows, cols, half-open) wider than ingest.max_lidar_gap_m: invalid cells in two regions.
HOLES = [(3, 10, 14, 21), (26, 34, 4, 9)]
_WEIGHTS = np.random.default_rng(7).normal(size=(2, FEATURES, len(CONFIG.class_ids)))


def _scores(values: np.ndarray, weights: int = 0) -> np.ndarray:
    """[..., F] raw values -> [..., K] per-pixel scores of the stand-in model (a sine, so that the tiny scene's
    regions, a few units apart in 1000s, score apart)."""
    return np.sin(0.37 * values.astype(np.float64)) @ _WEIGHTS[weights]


def fake_map_tile(tile: np.ndarray) -> np.ndarray:
    """The map contract in numpy: each window's mean score plus its centre pixel's own (position-sensitive, so a
    window off by one pixel changes the class)."""
    assert tile.dtype == np.float32 and tile.shape[-1] == FEATURES
    assert np.isfinite(tile).all(), "NaN reached the model"
    per_window = sliding_window_view(_scores(tile), (P, P), axis=(0, 1)).mean(axis=(-2, -1))
    centre = _scores(tile[HALF:tile.shape[0] - HALF, HALF:tile.shape[1] - HALF], weights=1)
    return (per_window + centre).astype(np.float32)


class CountingModel(MapModel):
    def __init__(self, fail_on_call: int | None = None):
        super().__init__("fake-model", CONFIG, self._map_tile)
        self.calls = 0
        self.fail_on_call = fail_on_call

    def _map_tile(self, tile):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("the model broke")
        return fake_map_tile(tile)


def expected_classes(scene_dir) -> np.ndarray:
    """The class of every pixel ingestion could cut a patch around, from that very patch; NODATA elsewhere."""
    rasters = load_scene(scene_dir, CONFIG, require_labels=False)
    rows, cols = np.nonzero(window_valid(rasters.valid, P))
    stack = np.concatenate([rasters.multispectral, rasters.lidar])
    patches = extract_patches(stack, rows, cols, P).transpose(0, 2, 1)  # (N, P*P, F)
    scores = _scores(patches).mean(axis=1) + _scores(patches[:, P * P // 2], weights=1)
    expected = np.full(rasters.valid.shape, NODATA, np.int64)
    expected[rows, cols] = np.asarray(CONFIG.class_ids)[np.argmax(scores, axis=1)]
    return expected


def read_band(path, band=1):
    with rasterio.open(path) as dataset:
        return dataset.read(band)


def test_the_map_lies_on_the_scenes_grid_with_nodata_a_colour_table_and_the_class_names(tmp_path):
    result = predict_scene(CountingModel(), write_scene(tmp_path / "data"), tmp_path / "out", progress="off")

    assert result.map_path == str(tmp_path / "out" / f"scene-001{MAP_SUFFIX}")
    with rasterio.open(result.map_path) as dataset:
        assert dataset.driver == "GTiff" and dataset.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert dataset.profile["compress"] == "deflate" and dataset.profile["tiled"]
        assert dataset.crs.to_string() == REFERENCE_CRS and dataset.transform == reference_transform()
        assert (dataset.width, dataset.height, dataset.count) == (SIZE, SIZE, 1)
        assert dataset.nodata == NODATA and NODATA not in CONFIG.class_ids
        colours = dataset.colormap(1)
        assert all(colours[class_id] == (*rgb, 255) for class_id, rgb in class_colours(CONFIG).items())
        assert len(set(class_colours(CONFIG).values())) == len(CONFIG.classes)
        assert json.loads(dataset.tags()[CLASSES_TAG]) == [{"id": c.id, "name": c.name} for c in CONFIG.classes]
        classes = dataset.read(1)
    # The edge, where no window fits, is nodata; every pixel inside has a class of the table.
    assert (classes[:HALF] == NODATA).all() and (classes[:, -HALF:] == NODATA).all()
    assert set(np.unique(classes[HALF:-HALF, HALF:-HALF])) <= set(CONFIG.class_ids)
    assert result.pixels == SIZE * SIZE and result.pixels_mapped == (SIZE - 2 * HALF) ** 2


def test_each_pixel_gets_the_class_of_the_patch_ingestion_would_cut_around_it(tmp_path):
    """Windows that reach a LiDAR hole (cells beyond the fill gap) or the raster's edge give nodata."""
    scene_dir = write_scene(tmp_path / "data", holes=HOLES)
    result = predict_scene(CountingModel(), scene_dir, tmp_path / "out", progress="off")

    expected = expected_classes(scene_dir)
    classes = read_band(result.map_path)
    np.testing.assert_array_equal(classes, expected)
    assert result.pixels_mapped == np.count_nonzero(expected) < (SIZE - 2 * HALF) ** 2
    assert len(np.unique(classes)) >= 4  # the stand-in model tells regions apart: the check can fail


@pytest.mark.parametrize("tile_size", [1, 5, 16])
def test_tiles_stitch_without_seams(tmp_path, tile_size):
    scene_dir = write_scene(tmp_path / "data", holes=HOLES)
    whole = predict_scene(CountingModel(), scene_dir, tmp_path / "whole", tile_size=SIZE, progress="off")
    model = CountingModel()
    tiled = predict_scene(model, scene_dir, tmp_path / "tiled", tile_size=tile_size, probabilities=True,
                          progress="off")

    assert whole.tiles == 1 and tiled.tiles == model.calls > 1
    np.testing.assert_array_equal(read_band(tiled.map_path), read_band(whole.map_path))
    np.testing.assert_array_equal(list(tiled.recall.values()), list(whole.recall.values()))


def test_recall_on_the_labels_is_the_argmax_recall_of_every_mapped_labelled_pixel(tmp_path):
    from models.metrics import argmax_recalls

    scene_dir = write_scene(tmp_path / "data", holes=HOLES)
    result = predict_scene(CountingModel(), scene_dir, tmp_path / "out", progress="off")

    expected = expected_classes(scene_dir)
    scored = (expected != NODATA) & (truth("label") != 0)
    label_index = CONFIG.class_indices(truth("label")[scored])
    one_hot = np.eye(len(CONFIG.class_ids))[CONFIG.class_indices(expected[scored])]
    recalls = argmax_recalls(label_index, one_hot, len(CONFIG.class_ids))
    np.testing.assert_array_equal(list(result.recall.values()), recalls)
    assert list(result.recall) == list(CONFIG.class_names)
    assert result.labelled_pixels == dict(zip(CONFIG.class_names, np.bincount(label_index, minlength=6).tolist()))
    assert result.recall_path == str(tmp_path / "out" / f"scene-001{RECALL_SUFFIX}")
    record = json.loads(open(result.recall_path).read())
    present = recalls[~np.isnan(recalls)]
    assert record["macro_recall"] == pytest.approx(present.mean())
    assert record["worst_class"] == CONFIG.class_names[int(np.nanargmin(recalls))]
    assert [c["recall"] for c in record["classes"]] == [None if math.isnan(r) else r for r in recalls]
    assert np.sum(record["confusion"]["counts"]) == np.count_nonzero(scored)


def test_printed_summary_names_each_class_recall_macro_and_worst(tmp_path, capsys):
    result = predict_scene(CountingModel(), write_scene(tmp_path / "data"), tmp_path / "out", progress="lines")
    out, err = capsys.readouterr()
    assert "scene-001: tile 1/1 (100 %)" in err
    assert result.map_path in out and result.recall_path in out
    assert all(name in out for name in CONFIG.class_names)
    assert f"macro {result.macro_recall:.3f}, worst {result.worst_class}" in out
    predict_scene(CountingModel(), write_scene(tmp_path / "data2"), tmp_path / "out2", progress="off")
    assert capsys.readouterr() == ("", "")


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise(tmp_path, capsys, monkeypatch):
    scene_dir = write_scene(tmp_path / "data")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    predict_scene(CountingModel(), scene_dir, tmp_path / "bar", tile_size=8, progress="auto")
    err = capsys.readouterr().err
    assert "scene-001:   0%|" in err and "tile/s]" in err and "(100 %)" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    predict_scene(CountingModel(), scene_dir, tmp_path / "lines", tile_size=8, progress="auto")
    err = capsys.readouterr().err
    assert "scene-001: tile 25/25 (100 %)" in err and "tile/s" not in err
    assert len(err.splitlines()) == 10  # about every tenth of the tiles, not one line per tile


def test_an_unlabelled_scene_is_mapped_without_recall(tmp_path):
    scene_dir = write_scene(tmp_path / "data", holes=HOLES)
    (scene_dir / LABELS_FILE).unlink()
    result = predict_scene(CountingModel(), scene_dir, tmp_path / "out", progress="off")

    assert result.recall is None and result.recall_path is None and math.isnan(result.macro_recall)
    np.testing.assert_array_equal(read_band(result.map_path), expected_classes(scene_dir))
    assert sorted(os.listdir(tmp_path / "out")) == [f"scene-001{MAP_SUFFIX}"]


def test_probabilities_hold_the_confidence_then_each_class_and_nan_where_the_map_has_nodata(tmp_path):
    scene_dir = write_scene(tmp_path / "data", holes=HOLES)
    result = predict_scene(CountingModel(), scene_dir, tmp_path / "out", probabilities=True, progress="off")

    assert result.probabilities_path == str(tmp_path / "out" / f"scene-001{PROBABILITIES_SUFFIX}")
    with rasterio.open(result.probabilities_path) as dataset:
        assert dataset.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and dataset.dtypes[0] == "float32"
        assert dataset.descriptions == (CONFIDENCE, *CONFIG.class_names)
        assert dataset.crs.to_string() == REFERENCE_CRS and dataset.transform == reference_transform()
        values = dataset.read()
    classes = read_band(result.map_path)
    mapped = classes != NODATA
    assert np.isnan(values[:, ~mapped]).all() and np.isfinite(values[:, mapped]).all()
    np.testing.assert_array_equal(values[0, mapped], values[1:, mapped].max(axis=0))
    np.testing.assert_array_equal(np.asarray(CONFIG.class_ids)[np.argmax(values[1:, mapped], axis=0)], classes[mapped])


def test_a_scene_that_cannot_be_read_names_the_file_and_nothing_is_written(tmp_path):
    scene_dir = write_scene(tmp_path / "data")
    (scene_dir / MULTISPECTRAL_FILE).write_bytes(b"not a raster\n" * 64)
    with pytest.raises(SceneError) as raised:
        predict_scene(CountingModel(), scene_dir, tmp_path / "out", progress="off")
    assert raised.value.path == str(scene_dir / MULTISPECTRAL_FILE) and "cannot read raster" in raised.value.problem
    assert str(scene_dir / MULTISPECTRAL_FILE) in str(raised.value)
    assert os.listdir(tmp_path / "out") == []


def test_a_failure_while_mapping_leaves_no_half_written_map(tmp_path):
    scene_dir = write_scene(tmp_path / "data")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="the model broke"):
        predict_scene(CountingModel(fail_on_call=3), scene_dir, out, tile_size=8, probabilities=True, progress="off")
    assert os.listdir(out) == []


def test_scene_ids_that_repeat_are_refused_before_any_work(tmp_path):
    first = write_scene(tmp_path / "a")
    second = write_scene(tmp_path / "b")
    model = CountingModel()
    with pytest.raises(PredictError, match="scene ids repeat \\(scene-001\\)"):
        predict_scenes(model, [first, second], tmp_path / "out", progress="off")
    assert model.calls == 0


def test_the_scenes_of_a_span_are_its_scene_folders(tmp_path):
    generate_sample(tmp_path, CONFIG, spans=2, scenes_per_span=2, size=32)
    assert scene_dirs_of_span(tmp_path, 2) == [str(tmp_path / span_folder(2) / f"scene-00{i}") for i in (0, 1)]
    with pytest.raises(PredictError, match=f"{span_folder(3)}: no such span folder"):
        scene_dirs_of_span(tmp_path, 3)


def _save_model(path, with_map: bool):
    """A SavedModel with the published contract's training record and either the map signature (a window
    average through fixed weights) or only a serving signature, as models exported before mapping had."""
    import tensorflow as tf

    weights = tf.constant(_WEIGHTS[0], tf.float32)

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, FEATURES], tf.float32, name=MAP_INPUT)])
        def map_tile(self, tile):
            pooled = tf.nn.avg_pool2d(tf.sin(0.37 * tile)[tf.newaxis], P, 1, "VALID")[0]
            return {PROBABILITIES: tf.nn.softmax(tf.tensordot(pooled, weights, 1))}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def serve(self, examples):
            return {PROBABILITIES: tf.zeros([tf.size(examples), len(CONFIG.class_ids)])}

    model = Model()
    signatures = {MAP_SIGNATURE: model.map_tile} if with_map else {SERVING_SIGNATURE: model.serve}
    tf.saved_model.save(model, str(path), signatures=signatures)
    write_training_record(str(path), {"config": CONFIG.to_dict()})
    return str(path)


def test_a_serving_dir_maps_with_its_newest_version(tmp_path):
    serving = tmp_path / "serving"
    _save_model(serving / "1", with_map=False)
    newest = _save_model(serving / "2", with_map=True)
    model = load_map_model(serving)
    assert model.model_dir == newest and model.config == CONFIG
    result = predict_scene(model, write_scene(tmp_path / "data"), tmp_path / "out", progress="off")
    classes = read_band(result.map_path)
    assert result.pixels_mapped == (SIZE - 2 * HALF) ** 2 and len(np.unique(classes[classes != NODATA])) >= 2
    with rasterio.open(result.map_path) as dataset:
        assert dataset.tags()["TERRAFUSE_MODEL"] == newest


def test_a_model_without_the_map_signature_is_refused_as_predating_it(tmp_path):
    model_dir = _save_model(tmp_path / "old", with_map=False)
    with pytest.raises(PredictError, match=f"{model_dir}: no {MAP_SIGNATURE} signature .* predates mapping"):
        load_map_model(model_dir)
    with pytest.raises(PredictError, match="neither a SavedModel"):
        load_map_model(tmp_path / "empty")


# The sample generator's default scene side.
DEFAULT_SIDE = 160


@pytest.fixture(scope="module")
def trained(e2e_config, first_run):
    """The model the shared end-to-end run (tests/conftest.py) blessed and pushed, from its serving dir."""
    blessed, _ = first_run
    assert blessed
    return load_map_model(e2e_config.serving_dir)


def _serving_classes(model_dir, rasters, rows, cols, config):
    """Class indices serving_default gives the patches ingestion cuts around (rows, cols)."""
    import tensorflow as tf

    serve = tf.saved_model.load(model_dir).signatures[SERVING_SIGNATURE]
    serialized = encode_examples(rasters, rows, cols, config)
    return np.concatenate([np.argmax(serve(examples=tf.constant(serialized[i:i + 4096]))[PROBABILITIES].numpy(), 1)
                           for i in range(0, len(serialized), 4096)])


@pytest.mark.slow
def test_the_map_agrees_with_serving_default_and_so_does_its_recall(trained, tmp_path):
    """Every mapped pixel of a sample scene against its patch through serving_default; recall on the scene's
    labels against serving_default's on the same labelled pixels (the Evaluator's route, on every pixel)."""
    from models.metrics import argmax_recalls

    model = trained
    generate_sample(tmp_path / "data", CONFIG, scenes_per_span=1, size=DEFAULT_SIDE, seed=11)
    (scene_dir,) = scene_dirs_of_span(tmp_path / "data", 1)
    result = predict_scene(model, scene_dir, tmp_path / "out", progress="off")

    rasters = load_scene(scene_dir, model.config)
    rows, cols = np.nonzero(window_valid(rasters.valid, P))
    served = _serving_classes(model.model_dir, rasters, rows, cols, model.config)
    mapped = np.asarray(model.config.class_indices(read_band(result.map_path)[rows, cols]))
    assert len(np.unique(served)) >= 3  # a model that maps everything to one class would agree trivially
    assert np.mean(mapped == served) >= 0.999
    labelled = rasters.labels[rows, cols] != 0
    serving_recall = argmax_recalls(model.config.class_indices(rasters.labels[rows, cols][labelled]),
                                    np.eye(len(model.config.class_ids))[served[labelled]], len(model.config.class_ids))
    np.testing.assert_allclose(list(result.recall.values()), serving_recall, atol=0.005)


@pytest.mark.slow
def test_a_scene_twice_the_default_side_runs_in_tiles_and_maps_as_in_one(trained, tmp_path):
    model = trained
    generate_sample(tmp_path / "data", CONFIG, scenes_per_span=1, size=2 * DEFAULT_SIDE, seed=12)
    (scene_dir,) = scene_dirs_of_span(tmp_path / "data", 1)
    tiled = predict_scene(model, scene_dir, tmp_path / "tiled", progress="off")
    whole = predict_scene(model, scene_dir, tmp_path / "whole", tile_size=2 * DEFAULT_SIDE, progress="off")

    assert tiled.tiles > 1 and whole.tiles == 1
    np.testing.assert_array_equal(read_band(tiled.map_path), read_band(whole.map_path))


@pytest.mark.slow
def test_recall_on_a_scenes_test_examples_is_the_evaluators_on_them(e2e_config, first_run, tmp_path):
    """The Evaluator's data for one scene (the first e2e run's test examples cut from it) scored two ways: through
    its model's serving_default as the Evaluator scores them, and by reading that model's class map at the
    examples' centre pixels. Everything comes from the first run: later e2e runs add spans and push other models."""
    import tensorflow as tf

    from models.metrics import argmax_recalls
    from pipeline.summary import last_run, run_ids, span

    runs = last_run(e2e_config, run_ids(e2e_config)[0])
    (examples_uri,) = [r.outputs["examples"][0].uri for r in runs if r.node == SCENE_EXAMPLE_GEN]
    (model_uri,) = [r.outputs["model"][0].uri for r in runs if r.node == TRAINER]
    model = load_map_model(os.path.join(model_uri, "Format-Serving"))
    files = glob.glob(os.path.join(examples_uri, f"Split-{TEST}", "*.gz"))
    serialized = np.concatenate([b.numpy() for b in tf.data.TFRecordDataset(files, "GZIP").batch(4096)])
    spec = raw_feature_spec(e2e_config)
    where = {k: v.numpy() for k, v in tf.io.parse_example(serialized, {k: spec[k] for k in (LABEL, SCENE_ID, ROW, COL)})
             .items()}
    scene_ids, counts = np.unique(where[SCENE_ID], return_counts=True)
    scene_id = scene_ids[np.argmax(counts)]
    mine = where[SCENE_ID] == scene_id
    classes = len(e2e_config.class_ids)
    labels = np.asarray(e2e_config.class_indices(where[LABEL][mine]))
    serve = tf.saved_model.load(model.model_dir).signatures[SERVING_SIGNATURE]
    evaluators = argmax_recalls(labels, serve(examples=tf.constant(serialized[mine]))[PROBABILITIES].numpy(), classes)

    scene_dir = os.path.join(e2e_config.run.data_root, span_folder(span(runs)), scene_id.decode())
    result = predict_scene(model, scene_dir, tmp_path / "out", progress="off")
    mapped = read_band(result.map_path)[where[ROW][mine], where[COL][mine]]
    assert NODATA not in mapped  # every test example's window was valid, so its pixel is mapped
    from_map = argmax_recalls(labels, np.eye(classes)[e2e_config.class_indices(mapped)], classes)
    assert mine.sum() >= 200 and len(set(labels)) == classes
    np.testing.assert_allclose(from_map, evaluators, atol=0.005)
