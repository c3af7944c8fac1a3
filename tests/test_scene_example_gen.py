"""Scene ExampleGen on real files and real Beam: three splits with a buffer, valid pixels only, per-band features,
bad scenes reported together, the ingest report."""
import glob
import json
import logging
import os
import re

import apache_beam as beam
import numpy as np
import pytest
import rasterio
import tensorflow as tf
from apache_beam.pipeline import PipelineVisitor
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.utils import proto_utils
from tiny_scenes import POINT_CLOUD_FILE, REFERENCE_CRS, SIZE, reference_transform, write_raster, write_scene

import components.scene_example_gen
from components.scene_example_gen import (BUFFER_DROPPED, INGEST_REPORT_FILE, INGEST_REPORT_PROPERTY, BadScenesError,
                                          Executor, SceneExampleGen, SceneSummary, assign_blocks, band_scale_outliers,
                                          group_count, merge_block_counts, plan_splits, read_ingest_report,
                                          resolve_newest_span, scene_examples, scene_patches, split_fractions,
                                          window_split)
from components.scenes import SceneError, plan_scene
from foundation.config import SPLITS, TEST, TRAIN, VALIDATION, Config
from foundation.scene_folder import LABELS_FILE, MULTISPECTRAL_FILE, span_folder
from synth.scenes import generate_sample
from transforms.features import BLOCK_ID, COL, LABEL, ROW, SCENE_ID, layout, raw_feature_spec

P = Config().ingest.patch_size
HALF = P // 2


def resolved_exec_properties(config: Config, data_root, pattern=f"{span_folder(1)}/*/*"):
    """The component's exec properties with the split pattern the driver resolved."""
    component = SceneExampleGen(config.replace({"run.data_root": str(data_root)}))
    exec_properties = dict(component.exec_properties)
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
    input_config.splits[0].pattern = pattern
    exec_properties[standard_component_specs.INPUT_CONFIG_KEY] = proto_utils.proto_to_json(input_config)
    return exec_properties


def run_executor(config: Config, data_root, output_dir, pattern=f"{span_folder(1)}/*/*"):
    """Runs the executor as TFX would, with the split pattern the driver resolved."""
    exec_properties = resolved_exec_properties(config, data_root, pattern)
    examples = standard_artifacts.Examples()
    examples.uri = str(output_dir)
    Executor().Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
    return examples


def read_split(uri, split, config):
    files = glob.glob(os.path.join(uri, f"Split-{split}", "*.gz"))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096)
    return parse(dataset, config)


def parse(batches, config):
    spec = raw_feature_spec(config)
    rows = [tf.io.parse_example(batch, spec) for batch in batches]
    if not rows:
        return {key: np.empty(0) for key in spec}
    return {key: tf.concat([r[key] for r in rows], 0).numpy() for key in spec}


def split_overlaps(splits, size):
    """Pixels of each scene covered by windows of more than one split, from the written row/col features."""
    covered = {}
    for index, split in enumerate(SPLITS):
        data = splits[split]
        for scene, row, col in zip(data[SCENE_ID].tolist(), data[ROW].tolist(), data[COL].tolist()):
            grid = covered.setdefault(scene, np.zeros((len(SPLITS), size, size), bool))
            grid[index, row - HALF:row + HALF + 1, col - HALF:col + HALF + 1] = True
    return {scene: int(np.count_nonzero(grid.sum(axis=0) > 1)) for scene, grid in covered.items()}


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    """The default sample, smaller: 4 scenes of 96 px."""
    root = tmp_path_factory.mktemp("data")
    generate_sample(root, Config(), spans=1, scenes_per_span=4, size=96, seed=3)
    return root


def _run_on_sample(sample_root, tmp_path_factory, overrides):
    config = Config().replace(overrides)
    examples = run_executor(config, sample_root, tmp_path_factory.mktemp("out"))
    return config, examples, {split: read_split(examples.uri, split, config) for split in SPLITS}


@pytest.fixture(scope="module")
def by_block(sample_root, tmp_path_factory):
    return _run_on_sample(sample_root, tmp_path_factory, {})


@pytest.fixture(scope="module")
def by_scene(sample_root, tmp_path_factory):
    return _run_on_sample(sample_root, tmp_path_factory, {"ingest.split_by": "scene"})


def test_three_splits_of_whole_blocks_with_one_feature_per_band(by_block):
    config, _, splits = by_block
    sizes = {split: len(splits[split][LABEL]) for split in SPLITS}
    assert sizes[TRAIN] > 2 * sizes[VALIDATION] > 0 and sizes[TRAIN] > 2 * sizes[TEST] > 0, sizes
    blocks = {split: set(splits[split][BLOCK_ID].tolist()) for split in SPLITS}
    assert not blocks[TRAIN] & blocks[VALIDATION] and not blocks[TRAIN] & blocks[TEST]
    assert not blocks[VALIDATION] & blocks[TEST]
    for split in SPLITS:
        assert set(splits[split][LABEL].tolist()) == set(config.class_ids), split
        for name in layout(config).stream_features:
            assert splits[split][name].shape == (sizes[split], P * P)
    shares = {split: np.array([np.mean(splits[split][LABEL] == c) for c in config.class_ids]) for split in SPLITS}
    assert np.abs(shares[VALIDATION] - shares[TRAIN]).max() < 0.15 and np.abs(shares[TEST] - shares[TRAIN]).max() < 0.15
    assert splits[TRAIN]["ms_nir"].mean() > 1000 and splits[TRAIN]["lidar_height"].max() > 5


def test_no_validation_or_test_window_overlaps_a_training_window(by_block, sample_root):
    _, examples, splits = by_block
    assert split_overlaps(splits, 96) == {f"scene-{i:03d}".encode(): 0 for i in range(4)}

    report = read_ingest_report(examples.uri)
    assert report["split_by"] == "block" and report["bad_scenes"] == []
    written = {split: len(splits[split][LABEL]) for split in SPLITS}
    assert report["patches_per_split"] == written
    cut = sum(scene["patches"] for scene in report["scenes"].values())
    assert report["buffer_dropped"] == cut - sum(written.values()) > 0.1 * cut
    for scene_dir in sorted((sample_root / span_folder(1)).iterdir()):
        with rasterio.open(scene_dir / LABELS_FILE) as src:
            labels = src.read(1)
        scene = report["scenes"][scene_dir.name]
        # The sample is valid everywhere: every labelled pixel whose window fits in the scene is cut.
        assert scene["patches"] == scene["valid_labelled_pixels"] == np.count_nonzero(labels[HALF:-HALF, HALF:-HALF])
        assert scene["labelled_pixels"] == np.count_nonzero(labels)
        assert scene["masked_pixels"] == {"multispectral": 0, "lidar": 0, "labels": int(np.count_nonzero(labels == 0))}
        assert set(scene["lidar_filled_cells"]) == {"height", "intensity"}
    assert json.loads(examples.get_string_custom_property(INGEST_REPORT_PROPERTY)) == report
    assert os.path.isfile(os.path.join(examples.uri, INGEST_REPORT_FILE))


def test_a_scene_split_deals_whole_scenes_and_loses_nothing_to_the_buffer(by_scene, by_block):
    _, examples, splits = by_scene
    scenes = {split: set(splits[split][SCENE_ID].tolist()) for split in SPLITS}
    assert all(scenes.values()) and sum(len(s) for s in scenes.values()) == 4
    assert split_overlaps(splits, 96) == {f"scene-{i:03d}".encode(): 0 for i in range(4)}
    report = read_ingest_report(examples.uri)
    assert report["split_by"] == "scene" and report["buffer_dropped"] == 0
    assert sum(report["patches_per_split"].values()) == sum(s["patches"] for s in report["scenes"].values())
    assert report["scenes"] == read_ingest_report(by_block[1].uri)["scenes"]


def test_blocks_are_dealt_so_every_class_gets_each_splits_share():
    rng = np.random.default_rng(0)
    # 300 blocks, each dominated by one of four classes; class 3 lives in few blocks only.
    counts = {}
    for i in range(300):
        block = np.zeros(4, np.int64)
        block[rng.choice(4, p=[0.4, 0.35, 0.2, 0.05])] = rng.integers(20, 60)
        counts[b"scene/%d" % i] = block
    fractions = [0.6, 0.2, 0.2]
    assignment = assign_blocks(counts, fractions)
    assert set(assignment) == set(counts) and set(assignment.values()) == {0, 1, 2}
    total = np.sum(list(counts.values()), axis=0)
    for split, fraction in enumerate(fractions):
        in_split = np.sum([c for b, c in counts.items() if assignment[b] == split], axis=0)
        np.testing.assert_allclose(in_split / total, fraction, atol=0.05)
    assert assign_blocks(dict(reversed(list(counts.items()))), fractions) == assignment, "order must not matter"


def test_no_split_is_left_empty_while_units_remain():
    equal = {b"scene-%d" % i: np.array([100, 50]) for i in range(3)}
    assert sorted(assign_blocks(equal, [0.6, 0.2, 0.2]).values()) == [0, 1, 2]


def test_a_window_is_kept_only_where_every_block_it_touches_shares_its_split():
    """Blocks a and c hold patches and go to different splits; block b between them holds none. A window
    reaching from a into b and one reaching from c into b could overlap inside b: b counts as train."""
    assignment = {b"a": SPLITS.index(TEST), b"c": SPLITS.index(TRAIN)}
    assert window_split((b"a",), assignment) == SPLITS.index(TEST)
    assert window_split((b"a", b"b"), assignment) == BUFFER_DROPPED
    assert window_split((b"c", b"b"), assignment) == SPLITS.index(TRAIN)
    assert window_split((b"c", b"a"), assignment) == BUFFER_DROPPED


def fractions_of(config):
    output_config = proto_utils.json_to_proto(SceneExampleGen(config).exec_properties["output_config"],
                                              example_gen_pb2.Output())
    return split_fractions(output_config)


def sampled_scenes(sample_root, config):
    """Every scene's sampled patch centres and the blocks their windows touch, read in one process."""
    return [scene_patches(str(scene_dir), config) for scene_dir in sorted((sample_root / span_folder(1)).iterdir())]


def patches_by_split(scenes, assignment):
    """(scene, row, col) of the patches window_split sends to each split index (and to BUFFER_DROPPED)."""
    expected = {index: set() for index in range(len(SPLITS) + 1)}
    for scene in scenes:
        scene_id = scene.summary.scene_id.encode()
        for row, col, units in zip(scene.rows.tolist(), scene.cols.tolist(), scene.units):
            expected[window_split(units, assignment)].add((scene_id, row, col))
    return expected


def written_by_split(splits):
    return {index: set(zip(splits[split][SCENE_ID].tolist(), splits[split][ROW].tolist(), splits[split][COL].tolist()))
            for index, split in enumerate(SPLITS)}


def test_with_one_group_every_patch_goes_where_one_global_plan_sends_it(by_block, sample_root):
    """At the sample's scale the blocks form one group: the splits are those of assign_blocks over every block
    at once (the plan before groups existed), patch by patch."""
    config, examples, splits = by_block
    scenes = sampled_scenes(sample_root, config)
    blocks = merge_block_counts(scene.unit_counts for scene in scenes)
    assert group_count(len(blocks), config.ingest.split_group_units) == 1
    expected = patches_by_split(scenes, assign_blocks(blocks, fractions_of(config)))
    written = written_by_split(splits)
    for index in range(len(SPLITS)):
        assert written[index] == expected[index] and written[index]
    assert read_ingest_report(examples.uri)["buffer_dropped"] == len(expected[BUFFER_DROPPED])


GROUP_UNITS = 5


@pytest.fixture(scope="module")
def in_groups(sample_root, tmp_path_factory):
    """Two runs dealing the sample's 36 blocks in groups of about GROUP_UNITS, with every group's size recorded."""
    dealt = []
    deal = components.scene_example_gen.assign_blocks

    def recording(block_counts, fractions):
        dealt.append(len(block_counts))
        return deal(block_counts, fractions)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(components.scene_example_gen, "assign_blocks", recording)
        runs = [_run_on_sample(sample_root, tmp_path_factory, {"ingest.split_group_units": GROUP_UNITS})
                for _ in range(2)]
    return runs, dealt


def test_in_many_groups_every_block_gets_one_split_with_the_buffer_and_no_group_holds_them_all(in_groups, sample_root):
    (config, examples, splits), _ = in_groups[0]
    scenes = sampled_scenes(sample_root, config)
    blocks = merge_block_counts(scene.unit_counts for scene in scenes)
    plan = plan_splits([], [scene.summary for scene in scenes], [scene.unit_counts for scene in scenes],
                       fractions_of(config), config)
    assert set(plan.assignment) == set(blocks)
    expected = patches_by_split(scenes, plan.assignment)
    written = written_by_split(splits)
    for index in range(len(SPLITS)):
        assert written[index] == expected[index] and written[index]
    centre_blocks = [set(splits[split][BLOCK_ID].tolist()) for split in SPLITS]
    assert sum(map(len, centre_blocks)) == len(set.union(*centre_blocks)) == len(blocks)
    assert split_overlaps(splits, 96) == {f"scene-{i:03d}".encode(): 0 for i in range(4)}
    # Each run dealt its blocks in several groups, none of them every block.
    dealt = in_groups[1]
    assert group_count(len(blocks), GROUP_UNITS) > 2 and sum(dealt) == 2 * len(blocks)
    assert max(dealt) < len(blocks) / 2 and len(dealt) > 4


def test_in_many_groups_the_splits_are_the_same_every_run(in_groups):
    (_, examples, splits), (_, again, splits_again) = in_groups[0]
    assert written_by_split(splits_again) == written_by_split(splits)
    assert read_ingest_report(again.uri) == read_ingest_report(examples.uri)


def test_only_scene_level_and_scalar_data_reach_every_worker(sample_root, tmp_path):
    """Side inputs are the only values every worker gets: bad scenes' errors and the scene summaries (one per
    scene, no block in them), the scenes left out, the number of blocks and the patch counts per split and class."""
    executor = Executor()
    executor._examples_uri = str(tmp_path)
    pipeline = beam.Pipeline()
    executor.GenerateExamplesByBeam(pipeline, resolved_exec_properties(Config(), sample_root))
    side_inputs = set()

    class SideInputs(PipelineVisitor):
        def visit_transform(self, node):
            side_inputs.update(side.pvalue.producer.full_label.split("/")[0] for side in node.side_inputs)

    pipeline.visit(SideInputs())
    assert side_inputs == {"CollectErrors", "CollectSummaries", "LeftOut", "CountUnits", "CollectCounts"}


def examples_of(scene_dir, config):
    examples = scene_examples(str(scene_dir), config)
    return parse([examples.serialized], config), examples.summary.report


def test_a_nan_region_and_a_nodata_border_never_reach_an_example(tmp_path):
    config = Config().replace({"ingest.max_per_class": 0})
    nan_scene = write_scene(tmp_path, "scene-nan", float_reflectance=True)
    with rasterio.open(nan_scene / MULTISPECTRAL_FILE) as src:
        bands = src.read()
    bands[3, 12:16, 10:14] = np.nan
    write_raster(nan_scene / MULTISPECTRAL_FILE, bands, REFERENCE_CRS, reference_transform())
    examples, report = examples_of(nan_scene, config)
    ms = np.stack([examples[name] for name in layout(config).multispectral], 1)
    assert np.isfinite(ms).all() and np.isfinite(examples["lidar_height"]).all()
    rows, cols = examples[ROW], examples[COL]
    reaches = (rows + HALF >= 12) & (rows - HALF < 16) & (cols + HALF >= 10) & (cols - HALF < 14)
    assert not reaches.any()
    assert ((rows == 12 - HALF - 1) & (cols == 11)).any()  # the window just clear of the region is kept
    assert report["masked_pixels"]["multispectral"] == 16

    nodata_scene = write_scene(tmp_path, "scene-nodata")
    with rasterio.open(nodata_scene / MULTISPECTRAL_FILE) as src:
        bands = src.read()
    bands[:, :, -3:] = 0  # an east fill border, declared nodata
    write_raster(nodata_scene / MULTISPECTRAL_FILE, bands, REFERENCE_CRS, reference_transform(), nodata=0)
    examples, report = examples_of(nodata_scene, config)
    ms = np.stack([examples[name] for name in layout(config).multispectral], 1)
    assert ms.min() > 0 and examples[COL].max() == SIZE - 3 - HALF - 1
    assert report["masked_pixels"]["multispectral"] == 3 * SIZE


def test_lidar_covering_half_a_scene_yields_no_patch_beyond_the_gap(tmp_path):
    scene_dir = write_scene(tmp_path, "scene-half", holes=[(0, SIZE, 20, SIZE)])  # no returns east of col 20
    config = Config().replace({"ingest.max_per_class": 0, "ingest.min_valid_share": 0.2})
    examples, report = examples_of(scene_dir, config)
    assert examples[COL].max() + HALF == 20  # the column 1 m from the returns is filled, the next is not
    assert np.isfinite(examples["lidar_intensity"]).all()
    assert report["lidar_filled_cells"] == {"height": SIZE, "intensity": SIZE}
    assert report["masked_pixels"]["lidar"] == SIZE * (SIZE - 21)
    labelled_with_window = 32 * 13  # rows 4..35, cols 4..16: all labelled
    assert report["valid_labelled_pixels"] == report["patches"] == labelled_with_window

    with pytest.raises(SceneError) as raised:
        scene_examples(str(scene_dir), Config())
    assert raised.value.path == str(scene_dir / POINT_CLOUD_FILE["las"])
    assert f"only {labelled_with_window / 1400:.1%} of its 1,400 labelled pixels" in raised.value.problem
    assert "ingest.min_valid_share 50%" in raised.value.problem
    assert "ingest.max_lidar_gap_m 1.5 m" in raised.value.problem


def write_span(root, scales):
    """One tiny scene per scale, its multispectral values multiplied by it (uint16, as delivered)."""
    for name, scale in scales.items():
        scene_dir = write_scene(root, name)
        with rasterio.open(scene_dir / MULTISPECTRAL_FILE) as src:
            bands = src.read().astype(float)
        write_raster(scene_dir / MULTISPECTRAL_FILE, np.rint(bands * scale).astype(np.uint16), REFERENCE_CRS,
                     reference_transform())


SPAN_WITH_AN_8_BIT_SCENE = {"scene-a": 0.8, "scene-b": 1.0, "scene-c": 1.25, "scene-8bit": 1 / 40}


def test_a_scene_delivered_in_8_bit_stops_the_run_naming_it(tmp_path):
    write_span(tmp_path / "data", SPAN_WITH_AN_8_BIT_SCENE)
    write_scene(tmp_path / "data", "scene-unreadable", band_count=3)
    with pytest.raises(BadScenesError) as failure:
        run_executor(Config().replace({"ingest.block_size": 10}), tmp_path / "data", tmp_path / "out")
    message = str(failure.value)
    assert "2 of 5 scenes are bad" in message
    # Blue of the tiny scenes: 1,000 + class id, median 1,030 (grass); / 40 and rounded: 26.
    assert f"scene scene-8bit: {tmp_path / 'data' / span_folder(1) / 'scene-8bit' / MULTISPECTRAL_FILE}: band blue " \
           f"median 26.0 vs 1,030.0, band green median 28.0 vs 1,130.0, " in message
    assert "scene-unreadable" in message and "3 bands" in message
    for ordinary in ("scene-a", "scene-b", "scene-c"):
        assert ordinary not in message


def test_skip_mode_leaves_bad_scenes_out_and_keeps_the_others(tmp_path):
    write_span(tmp_path / "data", SPAN_WITH_AN_8_BIT_SCENE)
    config = Config().replace({"ingest.on_bad_scene": "skip", "ingest.block_size": 10})
    examples = run_executor(config, tmp_path / "data", tmp_path / "out")
    scenes = set()
    for split in SPLITS:
        scenes |= set(read_split(examples.uri, split, config)[SCENE_ID].tolist())
    assert scenes == {b"scene-a", b"scene-b", b"scene-c"}
    report = read_ingest_report(examples.uri)
    assert sorted(report["scenes"]) == ["scene-a", "scene-b", "scene-c"]
    (bad,) = report["bad_scenes"]
    assert bad.startswith("scene scene-8bit: ") and "band red median" in bad
    cut = sum(scene["patches"] for scene in report["scenes"].values())
    assert sum(report["patches_per_split"].values()) + report["buffer_dropped"] == cut


def summary(scene_id, medians):
    return SceneSummary(scene_id, f"/data/{scene_id}/{MULTISPECTRAL_FILE}", tuple(medians), {})


def test_band_scales_are_compared_only_with_three_scenes_or_more(caplog):
    config = Config()
    ordinary = [summary(f"s{i}", [400 * scale, 800, 500, 3400, 1900]) for i, scale in enumerate((0.7, 1.0, 1.4))]
    assert band_scale_outliers(ordinary, config) == {}
    unscaled = summary("s-float", [0.04, 0.08, 0.05, 0.34, 0.19])  # reflectance 0..1 delivered as uint16 x 1
    (problem,) = band_scale_outliers(ordinary + [unscaled], config).values()
    assert problem.startswith(f"scene s-float: /data/s-float/{MULTISPECTRAL_FILE}: band blue median 0.0 vs 400.0")
    with caplog.at_level(logging.WARNING):
        assert band_scale_outliers([ordinary[0], unscaled], config) == {}
    assert "Band scales not compared across scenes: 2 scene(s) read, the check needs at least 3" in caplog.text


def test_all_bad_scenes_are_reported_at_once(tmp_path):
    root = tmp_path / "data"
    write_scene(root, "scene-good")
    write_scene(root, "scene-no-ground", ground=False)
    write_scene(root, "scene-missing-lidar", lidar="none")
    with pytest.raises(BadScenesError) as failure:
        run_executor(Config(), root, tmp_path / "out")
    message = str(failure.value)
    assert "2 of 3 scenes are bad" in message
    assert "scene-no-ground" in message and "no ground points" in message
    assert "scene-missing-lidar" in message
    assert "scene-good" not in message


def test_no_scene_folders_is_an_error_naming_the_pattern(tmp_path):
    (tmp_path / "data" / span_folder(1)).mkdir(parents=True)
    with pytest.raises(BadScenesError, match=re.escape(f"{span_folder(1)}/*/*: no scene folders match")):
        run_executor(Config(), tmp_path / "data", tmp_path / "out")


def test_an_unresolved_span_pattern_is_resolved_to_the_newest_span(tmp_path):
    """What the executor does when no ExampleGen driver ran first (the open-source KFP backend)."""
    config = Config().replace({"run.data_root": str(tmp_path)})
    generate_sample(tmp_path, config, spans=2, scenes_per_span=1, size=48)
    exec_properties = dict(SceneExampleGen(config).exec_properties)
    resolved = resolve_newest_span(exec_properties)
    (split,) = proto_utils.json_to_proto(resolved[standard_component_specs.INPUT_CONFIG_KEY],
                                         example_gen_pb2.Input()).splits
    assert split.pattern == f"{span_folder(2)}/*/*"
    assert resolved["span"] == 2 and resolved["input_fingerprint"].startswith("split:scenes,num_files:3,")
    assert resolve_newest_span(resolved) is resolved  # resolved by a driver: left alone


TILE_BLOCKS = 1  # 32 px tiles: each 96 px sample scene is read in 9 tiles


@pytest.fixture(scope="module")
def in_tiles(sample_root, tmp_path_factory):
    """A run reading every sample scene in 9 tiles, every labelled pixel sampled, with each tile step recorded."""
    made = []
    patches_of = components.scene_example_gen.tile_patches

    def recording(plan, tile, rasters, config):
        made.append((plan.scene_id, tile.row, tile.col))
        return patches_of(plan, tile, rasters, config)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(components.scene_example_gen, "tile_patches", recording)
        run = _run_on_sample(sample_root, tmp_path_factory,
                             {"ingest.tile_blocks": TILE_BLOCKS, "ingest.max_per_class": 0})
    return run, made


def test_a_scene_read_in_tiles_gives_the_examples_of_one_read_byte_for_byte(sample_root):
    """Windows of the rasters and per-tile sums of the point cloud, with a halo: every example (bands, LiDAR
    channels, label, row, col, block) and the scene's report and band medians are those of the scene read whole.
    With a halo too narrow for the ground's gaps, LiDAR heights near tile edges would differ."""
    whole = Config().replace({"ingest.max_per_class": 0})
    tiled = whole.replace({"ingest.tile_blocks": TILE_BLOCKS})
    narrow = tiled.replace({"ingest.tile_halo": 7})
    narrow_differs = False
    for scene_dir in sorted((sample_root / span_folder(1)).iterdir()):
        assert len(plan_scene(str(scene_dir), tiled).tiles) == 9
        one, nine = scene_examples(str(scene_dir), whole), scene_examples(str(scene_dir), tiled)
        assert sorted(nine.serialized) == sorted(one.serialized) and one.serialized
        assert nine.summary == one.summary
        narrow_differs |= set(scene_examples(str(scene_dir), narrow).serialized) != set(one.serialized)
    assert narrow_differs


def test_in_tiles_every_tile_is_a_step_and_every_patch_goes_where_one_read_sends_it(in_tiles, sample_root):
    (config, examples, splits), made = in_tiles
    scenes = sampled_scenes(sample_root, config.replace({"ingest.tile_blocks": 16}))
    assert sorted(made) == sorted((f"scene-{i:03d}", row, col) for i in range(4) for row in (0, 32, 64)
                                  for col in (0, 32, 64))
    expected = patches_by_split(scenes, assign_blocks(merge_block_counts(s.unit_counts for s in scenes),
                                                      fractions_of(config)))
    written = written_by_split(splits)
    for index in range(len(SPLITS)):
        assert written[index] == expected[index] and written[index]
    report = read_ingest_report(examples.uri)
    assert report["scenes"] == {s.summary.scene_id: s.summary.report for s in scenes}


def test_one_failing_tile_leaves_its_whole_scene_out(sample_root, tmp_path, monkeypatch):
    """The scene's other tiles made examples before the failure was known: none of them may be written."""
    read = components.scene_example_gen.tile_rasters

    def failing(plan, tile, sums, config):
        if plan.scene_id == "scene-001" and (tile.row, tile.col) == (64, 32):
            raise OSError("disk read error")
        return read(plan, tile, sums, config)

    monkeypatch.setattr(components.scene_example_gen, "tile_rasters", failing)
    config = Config().replace({"ingest.tile_blocks": TILE_BLOCKS, "ingest.on_bad_scene": "skip"})
    examples = run_executor(config, sample_root, tmp_path / "out")
    report = read_ingest_report(examples.uri)
    scene_dir = sample_root / span_folder(1) / "scene-001"
    assert report["bad_scenes"] == [f"scene scene-001: {scene_dir}: unexpected OSError: disk read error"]
    written = set()
    for split in SPLITS:
        written |= set(read_split(examples.uri, split, config)[SCENE_ID].tolist())
    assert written == {b"scene-000", b"scene-002", b"scene-003"}


def test_a_tile_without_points_or_without_ground_has_no_lidar_and_is_no_error(tmp_path):
    """A tile over a lake or a huge roof: without ground points in its window its heights are not invented, and
    without points it has no LiDAR; the scene is still good, its other tiles still give patches."""
    config = Config().replace({"ingest.patch_size": 3, "ingest.block_size": 4, "ingest.tile_blocks": 2,
                               "ingest.tile_halo": 4, "ingest.min_valid_share": 0.0, "ingest.max_per_class": 0})
    for kind, region in (("holes", [(0, SIZE, 28, SIZE)]), ("no_ground", [(0, SIZE, 28, SIZE)])):
        scene = scene_patches(str(write_scene(tmp_path / kind, config=config, **{kind: region})), config)
        beyond = [tile for tile in scene.tiles if tile.rasters.origin[1] >= 28]  # windows inside the region
        assert beyond and all(tile.report.patches == 0 for tile in beyond)
        assert not any(tile.rasters.lidar_valid.any() for tile in beyond)
        assert scene.summary.report["patches"] > 0


def test_a_halo_narrower_than_the_lidar_gap_fill_is_refused_naming_the_file(tmp_path):
    scene_dir = write_scene(tmp_path)
    config = Config().replace({"ingest.tile_halo": 8, "ingest.max_lidar_gap_m": 5.0})
    with pytest.raises(SceneError, match=r"ingest.tile_halo 8 px is less than .* 1 m pixels \(10 px\)") as raised:
        plan_scene(str(scene_dir), config)
    assert raised.value.path == str(scene_dir / MULTISPECTRAL_FILE)
