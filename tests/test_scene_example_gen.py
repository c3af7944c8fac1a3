"""Scene ExampleGen on real files and real Beam: spatial split, per-band features, bad scenes reported together."""
import glob
import os
import shutil

import pytest
import tensorflow as tf
from tfx.proto import example_gen_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

import numpy as np

from components.scene_example_gen import BadScenesError, Executor, SceneExampleGen, assign_blocks, resolve_newest_span
from pipeline.config import Config
from synth.scenes import generate_sample
from tiny_scenes import write_scene
from transforms.features import BLOCK_ID, LABEL, layout, raw_feature_spec


def run_executor(config: Config, data_root, output_dir, pattern="span-0001/*/*"):
    """Runs the executor as TFX would, with the split pattern the driver resolved."""
    component = SceneExampleGen(config.replace({"run.data_root": str(data_root)}))
    exec_properties = dict(component.exec_properties)
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
    input_config.splits[0].pattern = pattern
    exec_properties[standard_component_specs.INPUT_CONFIG_KEY] = proto_utils.proto_to_json(input_config)
    examples = standard_artifacts.Examples()
    examples.uri = str(output_dir)
    Executor().Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
    return examples


def read_split(uri, split, config):
    files = glob.glob(os.path.join(uri, f"Split-{split}", "*.gz"))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(4096)
    spec = raw_feature_spec(config)
    rows = [tf.io.parse_example(batch, spec) for batch in dataset]
    return {key: tf.concat([r[key] for r in rows], 0).numpy() for key in spec}


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generate_sample(root, Config(), spans=1, scenes_per_span=3, size=96, seed=3)
    return root


def test_examples_are_split_spatially_with_one_feature_per_band(sample_root, tmp_path):
    config = Config().replace({"ingest.block_size": 16})  # 84 blocks: enough to deal every class its share
    examples = run_executor(config, sample_root, tmp_path / "out")
    train, evaluation = read_split(examples.uri, "train", config), read_split(examples.uri, "eval", config)
    assert len(train[LABEL]) > 3 * len(evaluation[LABEL]) > 0
    assert not set(train[BLOCK_ID]) & set(evaluation[BLOCK_ID]), "a block sits in both splits"
    for name in layout(config).stream_features:
        assert train[name].shape == (len(train[LABEL]), config.ingest.patch_size ** 2)
    assert set(train[LABEL]) == set(config.class_ids)
    eval_share = {c: np.mean(evaluation[LABEL] == c) for c in config.class_ids}
    train_share = {c: np.mean(train[LABEL] == c) for c in config.class_ids}
    assert max(abs(eval_share[c] - train_share[c]) for c in config.class_ids) < 0.06, (train_share, eval_share)
    assert train["ms_nir"].mean() > 1000 and train["lidar_height"].max() > 5


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


def test_skip_mode_keeps_the_good_scenes(tmp_path):
    root = tmp_path / "data"
    write_scene(root, "scene-good")
    write_scene(root, "scene-bad", band_count=3)
    config = Config().replace({"ingest.on_bad_scene": "skip", "ingest.block_size": 10})
    examples = run_executor(config, root, tmp_path / "out")
    scenes = set()
    for split in ("train", "eval"):
        scenes |= set(read_split(examples.uri, split, config)["scene_id"])
    assert scenes == {b"scene-good"}


def test_no_scene_folders_is_an_error_naming_the_pattern(tmp_path):
    (tmp_path / "data" / "span-0001").mkdir(parents=True)
    with pytest.raises(BadScenesError, match=r"span-0001/\*/\*: no scene folders match"):
        run_executor(Config(), tmp_path / "data", tmp_path / "out")


def test_blocks_are_dealt_so_every_class_gets_its_eval_share():
    rng = np.random.default_rng(0)
    # 200 blocks, each dominated by one of four classes; class 3 lives in few blocks only.
    counts = {}
    for i in range(200):
        block = np.zeros(4, np.int64)
        block[rng.choice(4, p=[0.4, 0.35, 0.2, 0.05])] = rng.integers(20, 60)
        counts[b"scene/%d" % i] = block
    assignment = assign_blocks(counts, [0.8, 0.2])
    assert set(assignment) == set(counts) and set(assignment.values()) == {0, 1}
    total = np.sum(list(counts.values()), axis=0)
    in_eval = np.sum([c for b, c in counts.items() if assignment[b] == 1], axis=0)
    np.testing.assert_allclose(in_eval / total, 0.2, atol=0.05)
    assert assign_blocks(dict(reversed(list(counts.items()))), [0.8, 0.2]) == assignment, "order must not matter"


def test_an_unresolved_span_pattern_is_resolved_to_the_newest_span(tmp_path):
    """What the executor does when no ExampleGen driver ran first (the open-source KFP backend)."""
    config = Config().replace({"run.data_root": str(tmp_path)})
    generate_sample(tmp_path, config, spans=2, scenes_per_span=1, size=48)
    exec_properties = dict(SceneExampleGen(config).exec_properties)
    resolved = resolve_newest_span(exec_properties)
    (split,) = proto_utils.json_to_proto(resolved[standard_component_specs.INPUT_CONFIG_KEY],
                                         example_gen_pb2.Input()).splits
    assert split.pattern == "span-0002/*/*"
    assert resolved["span"] == 2 and resolved["input_fingerprint"].startswith("split:scenes,num_files:3,")
    assert resolve_newest_span(resolved) is resolved  # resolved by a driver: left alone
