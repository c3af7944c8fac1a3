"""The typed config: defaults, file and CLI overrides, and clear errors for bad values."""
import dataclasses
import re
import typing

import pytest
import yaml

from foundation.config import NUMERIC_SETTINGS, PROJECT_DIR, Config, ConfigError, load_config


def test_round_trips_through_dict():
    config = Config()
    assert Config.from_dict(config.to_dict()) == config


def test_file_then_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  epochs: 3\n  class_weights: inverse\n"
                    "streams:\n  lidar_channels: [height, intensity, return_ratio]\n")
    config = load_config(str(path), ["model.epochs=5", "gate.min_class_recall=0.7"])
    assert config.model.epochs == 5
    assert config.model.class_weights == "inverse"
    assert config.streams.lidar_channels == ("height", "intensity", "return_ratio")
    assert config.gate.min_class_recall == 0.7


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.epochs=three", "model.epochs must be an integer"),
        ("model.class_weights=balanced", "model.class_weights must be one of"),
        ("ingest.patch_size=8", "patch_size must be odd"),
        ("ingest.split_pattern=span-{SPAN}/*/*", "span width"),
        ("streams.lidar_channels=[intensity]", "include 'height'"),
        ("model.nonsense=1", "unknown config key 'model.nonsense'"),
        ("classes=[{id: 1, name: a}, {id: 1, name: b}]", "distinct positive ids"),
        ("kubeflow.module_source=bucket", "kubeflow.module_source must be one of"),
        ("kubeflow.step_resources=[{step: Trainer}, {step: Trainer, cpu_limit: 8}]",
         "kubeflow.step_resources must name each step once"),
        ("kubeflow.step_resources=[{cpu_limit: 8}]", "kubeflow.step_resources must name each step once"),
        ("kubeflow.step_resources=[{step: Trainer, cpus: 8}]", "unknown keys in config.kubeflow.step_resources"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("(", r"\(")):
        load_config(None, [override])


# One bad value for every numeric setting (NUMERIC_SETTINGS), then the checks between settings.
BAD_NUMBERS = [
    ("streams.float_reflectance_scale=0", "streams.float_reflectance_scale must be > 0, got 0.0"),
    ("ingest.patch_size=-1", "ingest.patch_size must be >= 1, got -1"),
    ("ingest.block_size=0", "ingest.block_size must be >= 1, got 0"),
    ("ingest.tile_blocks=0", "ingest.tile_blocks must be >= 1, got 0"),
    ("ingest.tile_halo=-1", "ingest.tile_halo must be >= 0, got -1"),
    ("ingest.tile_halo=3", "ingest.tile_halo must be at least half a patch (4), got 3"),
    ("ingest.max_per_class=-1", "ingest.max_per_class must be >= 0, got -1"),
    ("ingest.train_hash_buckets=0", "ingest.train_hash_buckets must be >= 1, got 0"),
    ("ingest.validation_hash_buckets=0", "ingest.validation_hash_buckets must be >= 1, got 0"),
    ("ingest.test_hash_buckets=-2", "ingest.test_hash_buckets must be >= 1, got -2"),
    ("ingest.split_group_units=0", "ingest.split_group_units must be >= 1, got 0"),
    ("ingest.max_lidar_gap_m=-0.5", "ingest.max_lidar_gap_m must be >= 0, got -0.5"),
    ("ingest.min_valid_share=1.5", "ingest.min_valid_share must be in [0, 1], got 1.5"),
    ("ingest.max_scene_band_ratio=1", "ingest.max_scene_band_ratio must be > 1, got 1.0"),
    ("ingest.sampling_seed=-3", "ingest.sampling_seed must be >= 0, got -3"),
    ("validation.label_skew_linf_max=-0.1", "validation.label_skew_linf_max must be in [0, 1], got -0.1"),
    ("validation.label_skew_js_max=2", "validation.label_skew_js_max must be in [0, 1], got 2.0"),
    ("validation.span_drift_linf_max=.nan", "validation.span_drift_linf_max must be in [0, 1], got nan"),
    ("validation.span_drift_js_max=-1", "validation.span_drift_js_max must be in [0, 1], got -1.0"),
    ("validation.multispectral_skew_js_max=1.2", "validation.multispectral_skew_js_max must be in [0, 1], got 1.2"),
    ("validation.lidar_skew_js_max=-0.2", "validation.lidar_skew_js_max must be in [0, 1], got -0.2"),
    ("validation.multispectral_drift_js_max=.inf",
     "validation.multispectral_drift_js_max must be in [0, 1], got inf"),
    ("validation.lidar_drift_js_max=3", "validation.lidar_drift_js_max must be in [0, 1], got 3.0"),
    ("transform.height_clip_m=[0, .inf]", "transform.height_clip_m[1] must be a finite number, got inf"),
    ("model.branch_filters=[32, 0]", "model.branch_filters[1] must be >= 1, got 0"),
    ("model.fused_filters=0", "model.fused_filters must be >= 1, got 0"),
    ("model.dense_units=-4", "model.dense_units must be >= 1, got -4"),
    ("model.dropout=1", "model.dropout must be in [0, 1), got 1.0"),
    ("model.stream_dropout=1", "model.stream_dropout must be in [0, 1), got 1.0"),
    ("model.learning_rate=0", "model.learning_rate must be > 0, got 0.0"),
    ("model.batch_size=0", "model.batch_size must be >= 1, got 0"),
    ("model.epochs=-1", "model.epochs must be >= 1, got -1"),
    ("model.early_stopping_patience=-1", "model.early_stopping_patience must be >= 0, got -1"),
    ("model.effective_number_beta=1", "model.effective_number_beta must be in [0, 1), got 1.0"),
    ("model.seed=4294967296", "model.seed must be in [0, 4294967295], got 4294967296"),
    ("gate.min_class_recall=1.1", "gate.min_class_recall must be in [0, 1], got 1.1"),
    ("gate.min_test_examples_per_class=0", "gate.min_test_examples_per_class must be >= 1, got 0"),
    ("gate.max_class_recall_drop=-0.1", "gate.max_class_recall_drop must be in [0, 1], got -0.1"),
    ("gate.max_macro_recall_drop=-5", "gate.max_macro_recall_drop must be in [0, 1], got -5.0"),
    ("gate.max_majority_excess=2", "gate.max_majority_excess must be in [0, 1], got 2.0"),
    ("run.direct_num_workers=-1", "run.direct_num_workers must be >= 0, got -1"),
    ("beam.parallelism=-1", "beam.parallelism must be >= 0, got -1"),
    ("beam.max_num_workers=-2", "beam.max_num_workers must be >= 0, got -2"),
    ("kubeflow.cpu_request=-1", "kubeflow.cpu_request must be >= 0, got -1.0"),
    ("kubeflow.cpu_limit=.inf", "kubeflow.cpu_limit must be >= 0, got inf"),
    ("kubeflow.memory_request_gb=-0.5", "kubeflow.memory_request_gb must be >= 0, got -0.5"),
    ("kubeflow.memory_limit_gb=.nan", "kubeflow.memory_limit_gb must be >= 0, got nan"),
    ("kubeflow.trainer_gpu_count=-1", "kubeflow.trainer_gpu_count must be >= 0, got -1"),
    ("kubeflow.step_resources=[{step: Evaluator, memory_limit_gb: -8}]",
     "kubeflow.step_resources[Evaluator].memory_limit_gb must be >= 0, got -8.0"),
    ("kubeflow.cpu_request=3", "kubeflow: cpu_request 3.0 is above cpu_limit 2.0"),
    ("kubeflow.step_resources=[{step: Trainer, memory_request_gb: 6}]",
     "kubeflow.step_resources[Trainer] (with the defaults): memory_request_gb 6.0 is above memory_limit_gb 4.0"),
    ("model.epochs=0", "model.epochs must be >= 1, got 0"),
    ("model.learning_rate=-0.001", "model.learning_rate must be > 0, got -0.001"),
    ("classes=[{id: 1, name: a, min_recall: 1.5}, {id: 2, name: b}]",
     "classes[a].min_recall must be in [0, 1], got 1.5"),
    ("ingest.block_size=5", "ingest.block_size must be at least ingest.patch_size (9), got 5"),
    ("transform.height_clip_m=[40, 0]", "transform.height_clip_m must be [low, high] with low < high, got [40.0, 0.0]"),
    ("transform.height_clip_m=[0, 20, 40]", "transform.height_clip_m must be [low, high] with low < high"),
]


@pytest.mark.parametrize("override, message", BAD_NUMBERS)
def test_bad_numbers_are_refused_with_their_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def _numeric_keys():
    """Every section key whose type is a number or a tuple of numbers."""
    keys = set()
    for section in dataclasses.fields(Config):
        hint = typing.get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(hint):
            continue
        for name, field_hint in typing.get_type_hints(hint).items():
            item_hints = typing.get_args(field_hint) if typing.get_origin(field_hint) is tuple else (field_hint,)
            if any(h in (int, float) for h in item_hints):
                keys.add(f"{section.name}.{name}")
    return keys


def test_every_numeric_setting_has_bounds_and_a_bad_value_tested():
    assert set(NUMERIC_SETTINGS) == _numeric_keys()
    tested = {override.split("=")[0] for override, _ in BAD_NUMBERS}
    assert set(NUMERIC_SETTINGS) <= tested, sorted(set(NUMERIC_SETTINGS) - tested)


def test_a_gpu_needs_its_type():
    with pytest.raises(ConfigError, match="kubeflow.trainer_gpu_count is 1 but kubeflow.trainer_gpu_type is empty"):
        load_config(None, ["kubeflow.trainer_gpu_count=1", "kubeflow.trainer_gpu_type=''"])
    assert load_config(None, ["kubeflow.trainer_gpu_type=''"]).kubeflow.trainer_gpu_count == 0  # no GPU, no type


def test_step_resources_override_only_the_keys_they_set():
    kubeflow = load_config(None, ["kubeflow.step_resources=[{step: Evaluator, memory_limit_gb: 16}]"]).kubeflow
    assert kubeflow.resources_of("Evaluator") == {"cpu_request": 1.0, "cpu_limit": 2.0, "memory_request_gb": 2.0,
                                                  "memory_limit_gb": 16.0}
    assert kubeflow.resources_of("Trainer") == kubeflow.resources_of(None)  # the list replaced the default one


@pytest.mark.parametrize("override", [
    "model.dropout=0", "ingest.max_per_class=0", "gate.max_macro_recall_drop=0", "gate.min_class_recall=1",
    "model.seed=4294967295", "model.effective_number_beta=0", "transform.height_clip_m=[-2.5, 0]",
    "model.branch_filters=[]", "run.direct_num_workers=0", "model.learning_rate=30", "beam.parallelism=0",
    "beam.max_num_workers=0", "kubeflow.cpu_limit=0", "kubeflow.memory_request_gb=0",
    "kubeflow.step_resources=[{step: Trainer, memory_request_gb: 6, memory_limit_gb: 0}]",
])
def test_values_at_the_edges_are_accepted(override):
    load_config(None, [override])


def test_the_documented_configs_load(tmp_path):
    """Every YAML config in the docs (e.g. docs/kubeflow.md's cluster.yaml) loads as it is written."""
    blocks = [block for path in sorted([PROJECT_DIR / "README.md", *(PROJECT_DIR / "docs").glob("*.md")])
              for block in re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S)]
    configs = [block for block in blocks if set(yaml.safe_load(block)) <= set(Config().to_dict())]
    assert len(configs) >= 2
    for i, block in enumerate(configs):
        path = tmp_path / f"{i}.yaml"
        path.write_text(block)
        load_config(str(path))


def test_bad_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("modle:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config section 'modle'"):
        load_config(str(path))


def test_class_indices_follow_the_table_not_the_id_order():
    config = Config().replace({"classes": [{"id": 7, "name": "a"}, {"id": 2, "name": "b"}, {"id": 5, "name": "c"}]})
    assert config.class_indices([2, 7, 5, 99, 7]) == [1, 0, 2, -1, 0]
