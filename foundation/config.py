"""The one typed configuration of terrafuse: defaults fit the sample scenes; a YAML/JSON file and
`--set section.key=value` on the command line override them.

Everything a component needs travels as `Config.to_dict()` in its custom_config, so executors that run in
another process (Beam workers, Kubeflow containers) rebuild the same object with `Config.from_dict`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from foundation.scene_folder import SPLIT_PATTERN

PROJECT_DIR = Path(__file__).resolve().parent.parent  # the checkout, or the image's /opt/terrafuse


class ConfigError(ValueError):
    """A configuration value or file that cannot be used; the message names it."""


@dataclass(frozen=True)
class TerrainClass:
    id: int
    name: str
    # This class's recall floor at the gate; None: gate.min_class_recall.
    min_recall: float | None = None


# ESA WorldCover-style ids: not contiguous, so nothing downstream may assume id == index.
DEFAULT_CLASSES = (
    TerrainClass(10, "trees"),
    TerrainClass(30, "grass"),
    TerrainClass(50, "building"),
    TerrainClass(55, "road"),
    TerrainClass(60, "bare_soil"),
    TerrainClass(80, "water"),
)

# The three splits: `validation` selects the model (early stopping, best epoch), `test` is the gate's data only.
TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)

BEAM_RUNNERS = ("direct", "portable", "flink", "spark", "dataflow")
# The `beam` keys each cluster runner cannot do without; a runner missing one is refused when the config loads.
BEAM_REQUIRED = {
    "flink": ("flink_master",),
    "spark": ("spark_master_url",),
    "dataflow": ("project", "region", "temp_location"),
}

LIDAR_CHANNEL_CHOICES = ("height", "intensity", "return_ratio", "density")
CLASS_WEIGHT_MODES = ("none", "inverse", "sqrt_inverse", "effective_number")


@dataclass(frozen=True)
class StreamsConfig:
    """Band order of multispectral.tif and the LiDAR channels rasterised from the point cloud."""

    multispectral_bands: tuple[str, ...] = ("blue", "green", "red", "nir", "swir")
    lidar_channels: tuple[str, ...] = ("height", "intensity")
    # Multiplier that brings float32 reflectance (0..1) to the uint16 scale (reflectance x 10000).
    float_reflectance_scale: float = 10000.0


@dataclass(frozen=True)
class IngestConfig:
    # Span folders hold one folder per scene; matching every file makes the cache fingerprint cover all streams.
    split_pattern: str = SPLIT_PATTERN
    patch_size: int = 9
    # Side of the square spatial tile, in pixels, that the split deals to train, validation and test.
    block_size: int = 32
    # "block": whole blocks are dealt to the splits (a patch whose window reaches into a block of another split is
    # dropped); "scene": whole scenes are, for users with many scenes (no patch is lost to the buffer).
    split_by: str = "block"
    # Labelled pixels sampled per class and tile (0 = all of them); a scene up to a tile on a side is one tile.
    max_per_class: int = 2000
    # Largest side of the tiles a scene is read and sampled in, in blocks (so a block's patches are one tile's; 16
    # blocks of 32 px: 512 px; a scene is cut into the fewest even tiles of at most this): what bounds one step's
    # memory, and what spreads a large scene over workers.
    tile_blocks: int = 16
    # Pixels a tile reads around it, so that windows, LiDAR gap fills and ground interpolation near its edge see
    # what the whole scene has; at least half a patch plus the LiDAR gap fill's reach.
    tile_halo: int = 32
    # Relative sizes of the splits, in blocks (or scenes) dealt.
    train_hash_buckets: int = 6
    validation_hash_buckets: int = 2
    test_hash_buckets: int = 2
    # Blocks (or scenes) are dealt in groups of about this many, each group on its own (a hash of the unit id
    # picks its group), so no worker holds every block: one group up to this size, as the sample's ~100 to 1,600.
    split_group_units: int = 100_000
    # LiDAR cells without returns take the nearest return within this distance; farther away they are invalid.
    max_lidar_gap_m: float = 1.5
    # A scene whose labelled pixels are valid in every stream less often than this is a bad scene.
    min_valid_share: float = 0.5
    # A scene whose band median differs from the rest of its span by this factor or more (either way) is a bad
    # scene: an 8-bit or unscaled delivery. Needs at least three scenes in the span to say which one is off.
    max_scene_band_ratio: float = 10.0
    sampling_seed: int = 0
    # "fail": a run with any bad scene stops and lists them all; "skip": bad scenes are reported and left out.
    on_bad_scene: str = "fail"


@dataclass(frozen=True)
class ValidationConfig:
    # Label distribution divergences (L-infinity and Jensen-Shannon) above these stop the run before Transform:
    # train vs validation and train vs test (skew), this span vs the serving model's training data (drift).
    label_skew_linf_max: float = 0.15
    label_skew_js_max: float = 0.05
    span_drift_linf_max: float = 0.10
    span_drift_js_max: float = 0.03
    # Per band and LiDAR channel: Jensen-Shannon divergence of the value distribution (TFDV, quantile histograms),
    # train vs test (skew) and this span's train vs the serving model's training data (drift). On the sample
    # scenes (seeds 0-4) ordinary variation measured at most 0.10 and a band at a tenth of its scale or in 8 bit
    # at least 0.97, heights in feet at least 0.37; a band recalibrated by 20 % measures about 0.3.
    multispectral_skew_js_max: float = 0.2
    lidar_skew_js_max: float = 0.2
    multispectral_drift_js_max: float = 0.2
    lidar_drift_js_max: float = 0.2
    # ExampleValidator anomalies stop the run unless this is False (they are then only reported).
    fail_on_schema_anomalies: bool = True


@dataclass(frozen=True)
class TransformConfig:
    # "per_stream": every band and LiDAR channel on its own statistics; "none": raw values (the seed's failure).
    normalization: str = "per_stream"
    # Normalised heights are clipped to this range (metres) before z-scoring: one tower must not set the scale.
    height_clip_m: tuple[float, float] = (0.0, 40.0)


@dataclass(frozen=True)
class ModelConfig:
    # "fused", "multispectral" or "lidar": which stream branches the CNN has.
    streams: str = "fused"
    branch_filters: tuple[int, ...] = (32, 64)
    fused_filters: int = 64
    dense_units: int = 128
    # The centre pixel's own values of every stream join the pooled features before the dense layers: pooling
    # over the window blurs the pixel being classified (issue 11).
    centre_pixel_path: bool = True
    # Training patches under a random one of the square's 8 rotations and reflections (models/augmentation.py).
    augment: bool = True
    # Share of training examples of a fused model that lose one stream, with `augment` (models/augmentation.py), so
    # that neither branch leans on the other's scene-specific detail. With the longer training below, chosen on
    # unseen scenes (docs/design-notes.md).
    stream_dropout: float = 0.3
    dropout: float = 0.2
    learning_rate: float = 2e-3
    batch_size: int = 128
    epochs: int = 30
    early_stopping_patience: int = 6
    # One of CLASS_WEIGHT_MODES; "effective_number" is Cui et al. 2019. The default was chosen by measurement
    # (docs/design-notes.md).
    class_weights: str = "inverse"
    effective_number_beta: float = 0.999
    seed: int = 0


@dataclass(frozen=True)
class GateConfig:
    """What the Evaluator requires on the test split before it blesses a model (docs/design-notes.md: why these)."""

    # Every class's argmax recall must reach this floor (or the class's own `min_recall`).
    min_class_recall: float = 0.75
    # Fewer test examples of a class than this is too little evidence to bless.
    min_test_examples_per_class: int = 30
    # Against the serving model (when comparable): per-class and macro recall may fall at most this much.
    max_class_recall_drop: float = 0.10
    max_macro_recall_drop: float = 0.02
    # The most predicted class's share of predictions may exceed its share of the test labels by at most this.
    max_majority_excess: float = 0.10


@dataclass(frozen=True)
class RunConfig:
    pipeline_name: str = "terrafuse"
    data_root: str = "data/sample"
    pipeline_root: str = "outputs"
    serving_dir: str = ""  # empty: <pipeline_root>/serving
    schema_file: str = ""  # empty: schemas/schema.pbtxt, the curated schema of the default streams
    enable_cache: bool = True
    # The Beam runner of the data steps (ExampleGen, StatisticsGen, Transform, Evaluator), one of BEAM_RUNNERS:
    # "direct" (DirectRunner, below), "portable" (PortableRunner, embedded job server, workers in their own
    # processes), or a cluster's, set in the `beam` section. pipeline/beam_runners.py builds the arguments.
    beam_runner: str = "direct"
    # DirectRunner: "in_memory", "multi_threading" or "multi_processing".
    direct_running_mode: str = "in_memory"
    direct_num_workers: int = 0  # 0: one per core
    # Appended after the runner's own arguments, so they may also override them.
    beam_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class BeamConfig:
    """The settings of the cluster runners (run.beam_runner flink, spark, dataflow); BEAM_REQUIRED says which."""

    # flink, spark: a Beam job server in front of the cluster (host:port), e.g. a pod of
    # apache/beam_flink1.19_job_server. Empty: the runner submits an uber jar itself over the cluster's REST API.
    job_endpoint: str = ""
    flink_master: str = ""  # flink: the JobManager's REST address, e.g. flink-jobmanager.flink:8081
    parallelism: int = 0  # flink: 0, the cluster's default
    spark_master_url: str = ""  # spark: e.g. spark://spark-master.spark:7077
    spark_rest_url: str = ""  # spark without job_endpoint: the master's REST submission URL, e.g. http://...:6066
    project: str = ""  # dataflow: the Google Cloud project
    region: str = ""  # dataflow: e.g. europe-west4
    temp_location: str = ""  # dataflow: a gs:// folder for temporary and staged files
    max_num_workers: int = 0  # dataflow: the autoscaling ceiling; 0, Dataflow's default
    machine_type: str = ""  # dataflow: the workers' machine type; empty, Dataflow's default


# Where the compiled Transform and Trainer find their code: "image", by import path in the image the steps run
# in (nothing is written at compile time); "wheel", TFX's module-file wheel under the pipeline root.
MODULE_SOURCES = ("image", "wheel")
STEP_RESOURCE_KEYS = ("cpu_request", "cpu_limit", "memory_request_gb", "memory_limit_gb")


@dataclass(frozen=True)
class StepResources:
    """One step's container resources, overriding the kubeflow.* defaults of the keys it sets (None: the default)."""

    step: str = ""  # a component id of the DAG (pipeline/component_ids.py), e.g. Trainer
    cpu_request: float | None = None
    cpu_limit: float | None = None
    memory_request_gb: float | None = None
    memory_limit_gb: float | None = None


@dataclass(frozen=True)
class KubeflowConfig:
    """Where the compiled pipeline runs: the paths are as the cluster's containers see them."""

    image: str = "terrafuse:0.1.0"
    host: str = ""  # KFP API endpoint, e.g. https://kubeflow.example.com/pipeline
    experiment: str = "terrafuse"
    pipeline_root: str = ""  # e.g. gs://bucket/terrafuse or a mounted volume; empty: run.pipeline_root
    data_root: str = ""  # empty: run.data_root
    serving_dir: str = ""  # a POSIX path (mounted volume): pushes are atomic renames; empty: <pipeline_root>/serving
    spec_file: str = "outputs/kubeflow/terrafuse.yaml"
    cron: str = "0 0 3 * * *"  # KFP cron: six fields, seconds first
    module_source: str = "image"  # one of MODULE_SOURCES
    # Every step's container resources (0: not set, the cluster's default): CPU in cores, memory in GB of 10^9
    # bytes, the KFP spec's units. A local run of the default sample peaks at 1.2 GiB, a 16x one at 3.7 GiB,
    # every step in one process (docs/benchmarks.md); a step alone needs less.
    cpu_request: float = 1.0
    cpu_limit: float = 2.0
    memory_request_gb: float = 2.0
    memory_limit_gb: float = 4.0
    # Steps that need other resources than the defaults above; a list replaces this one whole.
    step_resources: tuple[StepResources, ...] = (
        StepResources("Trainer", cpu_request=2.0, cpu_limit=4.0, memory_request_gb=4.0, memory_limit_gb=8.0),
    )
    # GPUs for the Trainer (0: none) and their kind: a Kubernetes resource name on the open-source backend
    # (nvidia.com/gpu), an accelerator type such as NVIDIA_TESLA_T4 on Vertex AI. Needs an image built with
    # --build-arg TENSORFLOW=gpu (Dockerfile).
    trainer_gpu_count: int = 0
    trainer_gpu_type: str = "nvidia.com/gpu"

    def resources_of(self, step: str | None) -> dict[str, float]:
        """The resources of one step: its step_resources entry where that sets a key, else the default."""
        values = {key: getattr(self, key) for key in STEP_RESOURCE_KEYS}
        for entry in self.step_resources:
            if entry.step == step:
                values.update({key: getattr(entry, key) for key in STEP_RESOURCE_KEYS
                               if getattr(entry, key) is not None})
        return values


@dataclass(frozen=True)
class Config:
    classes: tuple[TerrainClass, ...] = DEFAULT_CLASSES
    streams: StreamsConfig = field(default_factory=StreamsConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    run: RunConfig = field(default_factory=RunConfig)
    beam: BeamConfig = field(default_factory=BeamConfig)
    kubeflow: KubeflowConfig = field(default_factory=KubeflowConfig)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def class_ids(self) -> tuple[int, ...]:
        return tuple(c.id for c in self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    def class_indices(self, class_ids: Iterable[int]) -> list[int]:
        """Positions in the class table (what the model's outputs are indexed by); -1 for an id outside it. The
        table need not be sorted by id."""
        index = {class_id: i for i, class_id in enumerate(self.class_ids)}
        return [index.get(int(class_id), -1) for class_id in class_ids]

    @property
    def class_recall_floors(self) -> tuple[float, ...]:
        """Per class, in class-table order: its own `min_recall`, else gate.min_class_recall."""
        return tuple(self.gate.min_class_recall if c.min_recall is None else c.min_recall for c in self.classes)

    @property
    def serving_dir(self) -> str:
        """Absolute: the pusher, the drift gate and the baseline lookup must all name the same folder."""
        return resolve_path(self.run.serving_dir or os.path.join(self.run.pipeline_root, "serving"))

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.run.pipeline_root, "metadata.sqlite")

    def restricted(self, *sections: str) -> "Config":
        """Only the class table and `sections` kept, the rest at defaults.

        Components get the config in their execution properties, which are part of TFX's cache key: handing
        each only what it reads keeps, say, a new learning rate from re-running ingestion and Transform.
        """
        return dataclasses.replace(Config(), classes=self.classes, **{s: getattr(self, s) for s in sections})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return _build(cls, data, "config")

    def replace(self, overrides: dict[str, Any]) -> "Config":
        """A copy with dotted-key overrides, e.g. {"model.epochs": 3}."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.rpartition(".")
            target = data
            for part in filter(None, section.split(".")):
                if not isinstance(target, dict) or part not in target:
                    raise ConfigError(f"unknown config section {section!r} in {dotted!r}")
                target = target[part]
            if not isinstance(target, dict) or key not in target:
                raise ConfigError(f"unknown config key {dotted!r}")
            target[key] = value
        return Config.from_dict(data)


def resolve_path(path: str) -> str:
    """Absolute for a local path; URIs such as gs://bucket/dir are left as they are."""
    return path if "://" in path else os.path.abspath(path)


def require_model_fits_patch(config: Config) -> None:
    """Checked where a whole config starts a run and where the model is built, not on every Config: a component's
    restricted config (`Config.restricted`) pairs the run's patch size with the default model, which need not fit."""
    if convolved_patch_side(config) < 1:
        raise ConfigError(f"ingest.patch_size {config.ingest.patch_size} is too small for the model: "
                          f"{len(config.model.branch_filters)} branch convolutions and the fused one (3x3, valid) "
                          f"need at least {config.ingest.patch_size - convolved_patch_side(config) + 1}")


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML/JSON file, then `section.key=value` strings (values parsed as YAML)."""
    config = Config()
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read config: {err}") from err
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: config must be a mapping of sections")
        merged = config.to_dict()
        for section, values in data.items():
            if section not in merged:
                raise ConfigError(f"{path}: unknown config section {section!r}")
            if isinstance(merged[section], dict) and isinstance(values, dict):
                unknown = set(values) - set(merged[section])
                if unknown:
                    raise ConfigError(f"{path}: unknown keys in {section!r}: {sorted(unknown)}")
                merged[section].update(values)
            else:
                merged[section] = values
        try:
            config = Config.from_dict(merged)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err
    parsed = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not section.key=value")
        parsed[key.strip()] = yaml.safe_load(raw)
    config = config.replace(parsed) if parsed else config
    require_model_fits_patch(config)
    return config


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown keys in {where}: {sorted(unknown)}")
    kwargs = {name: _coerce(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # `X | None`: None, or an X
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return None if value is None else _coerce(inner, value, where)
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _build(hint, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(hint)
        item_hint = args[0]
        return tuple(_coerce(item_hint, v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _choice(where: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{where} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class Bounds:
    """The finite values a numeric setting accepts: from `low`, up to `high` if given; open ends excluded."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admit(self, where: str, value: float) -> None:
        above = value > self.low if self.low_open else value >= self.low
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        if not (math.isfinite(value) and above and below):
            raise ConfigError(f"{where} must be {self}, got {value}")

    def __str__(self) -> str:
        if self.high is None:
            return "a finite number" if self.low == -math.inf else f"{'>' if self.low_open else '>='} {self.low}"
        return f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"


AT_LEAST_0, AT_LEAST_1, POSITIVE = Bounds(0), Bounds(1), Bounds(0, low_open=True)
FRACTION, BELOW_1, FINITE = Bounds(0, 1), Bounds(0, 1, high_open=True), Bounds(-math.inf, low_open=True)
# Every numeric setting (a tuple's items one by one), by dotted key; a test checks that none is missing.
# Class ids and recall floors are checked with the class table.
NUMERIC_SETTINGS = {
    "streams.float_reflectance_scale": POSITIVE,
    "ingest.patch_size": AT_LEAST_1,
    "ingest.block_size": AT_LEAST_1,
    "ingest.tile_blocks": AT_LEAST_1,
    "ingest.tile_halo": AT_LEAST_0,
    "ingest.max_per_class": AT_LEAST_0,  # 0: every labelled pixel
    "ingest.train_hash_buckets": AT_LEAST_1,
    "ingest.validation_hash_buckets": AT_LEAST_1,
    "ingest.test_hash_buckets": AT_LEAST_1,
    "ingest.split_group_units": AT_LEAST_1,
    "ingest.max_lidar_gap_m": AT_LEAST_0,
    "ingest.min_valid_share": FRACTION,
    "ingest.max_scene_band_ratio": Bounds(1, low_open=True),  # a ratio, either way: 1 would flag every scene
    "ingest.sampling_seed": AT_LEAST_0,  # numpy seeds are non-negative
    # Distances between distributions: L-infinity of shares and Jensen-Shannon divergence both lie in [0, 1].
    "validation.label_skew_linf_max": FRACTION,
    "validation.label_skew_js_max": FRACTION,
    "validation.span_drift_linf_max": FRACTION,
    "validation.span_drift_js_max": FRACTION,
    "validation.multispectral_skew_js_max": FRACTION,
    "validation.lidar_skew_js_max": FRACTION,
    "validation.multispectral_drift_js_max": FRACTION,
    "validation.lidar_drift_js_max": FRACTION,
    "transform.height_clip_m": FINITE,  # and low < high, checked below
    "model.branch_filters": AT_LEAST_1,
    "model.fused_filters": AT_LEAST_1,
    "model.dense_units": AT_LEAST_1,
    "model.dropout": BELOW_1,  # Keras refuses a rate of 1
    "model.stream_dropout": BELOW_1,
    "model.learning_rate": POSITIVE,
    "model.batch_size": AT_LEAST_1,
    "model.epochs": AT_LEAST_1,
    "model.early_stopping_patience": AT_LEAST_0,
    "model.effective_number_beta": BELOW_1,  # (1 - beta) / (1 - beta^n) is undefined at 1
    "model.seed": Bounds(0, 2**32 - 1),  # tf_keras.utils.set_random_seed seeds numpy too
    "gate.min_class_recall": FRACTION,
    "gate.min_test_examples_per_class": AT_LEAST_1,
    "gate.max_class_recall_drop": FRACTION,
    "gate.max_macro_recall_drop": FRACTION,
    "gate.max_majority_excess": FRACTION,
    "run.direct_num_workers": AT_LEAST_0,  # 0: one per core
    "beam.parallelism": AT_LEAST_0,  # 0: the cluster's default
    "beam.max_num_workers": AT_LEAST_0,  # 0: Dataflow's default
    # kubeflow.step_resources entries are checked against the bounds of the key they override.
    "kubeflow.cpu_request": AT_LEAST_0,  # 0: not set
    "kubeflow.cpu_limit": AT_LEAST_0,
    "kubeflow.memory_request_gb": AT_LEAST_0,
    "kubeflow.memory_limit_gb": AT_LEAST_0,
    "kubeflow.trainer_gpu_count": AT_LEAST_0,  # 0: no GPU
}


def _validate(config: Config) -> None:
    ids = config.class_ids
    if len(ids) < 2 or len(set(ids)) != len(ids) or min(ids) <= 0:
        raise ConfigError(f"classes need at least two distinct positive ids (0 = unlabelled), got {list(ids)}")
    if len(set(config.class_names)) != len(config.class_names):
        raise ConfigError(f"class names must be distinct, got {list(config.class_names)}")
    bands = config.streams.multispectral_bands
    if not bands or len(set(bands)) != len(bands):
        raise ConfigError(f"streams.multispectral_bands must be distinct and non-empty, got {list(bands)}")
    channels = config.streams.lidar_channels
    if "height" not in channels or len(set(channels)) != len(channels):
        raise ConfigError(f"streams.lidar_channels must be distinct and include 'height', got {list(channels)}")
    for channel in channels:
        _choice("streams.lidar_channels[]", channel, LIDAR_CHANNEL_CHOICES)
    for key, bounds in NUMERIC_SETTINGS.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        for where, item in ([(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, tuple)
                            else [(key, value)]):
            bounds.admit(where, item)
    for terrain_class in config.classes:
        if terrain_class.min_recall is not None:
            FRACTION.admit(f"classes[{terrain_class.name}].min_recall", terrain_class.min_recall)
    if config.ingest.patch_size % 2 == 0:
        raise ConfigError(f"ingest.patch_size must be odd (the labelled pixel is its centre), "
                          f"got {config.ingest.patch_size}")
    if config.ingest.block_size < config.ingest.patch_size:
        raise ConfigError(f"ingest.block_size must be at least ingest.patch_size ({config.ingest.patch_size}), "
                          f"got {config.ingest.block_size}")
    if config.ingest.tile_halo < config.ingest.patch_size // 2:
        raise ConfigError(f"ingest.tile_halo must be at least half a patch ({config.ingest.patch_size // 2}), "
                          f"got {config.ingest.tile_halo}")
    clip = config.transform.height_clip_m
    if len(clip) != 2 or clip[0] >= clip[1]:
        raise ConfigError(f"transform.height_clip_m must be [low, high] with low < high, got {list(clip)}")
    if "{SPAN" in config.ingest.split_pattern and "{SPAN:" not in config.ingest.split_pattern:
        raise ConfigError("ingest.split_pattern must give the span width, e.g. span-{SPAN:4}: a bare {SPAN} "
                          "resolves span-0001 as span-1 and matches nothing")
    _choice("ingest.on_bad_scene", config.ingest.on_bad_scene, ("fail", "skip"))
    _choice("transform.normalization", config.transform.normalization, ("per_stream", "none"))
    _choice("model.streams", config.model.streams, ("fused", "multispectral", "lidar"))
    _choice("model.class_weights", config.model.class_weights, CLASS_WEIGHT_MODES)
    _choice("ingest.split_by", config.ingest.split_by, ("block", "scene"))
    _choice("run.direct_running_mode", config.run.direct_running_mode,
            ("in_memory", "multi_threading", "multi_processing"))
    _validate_beam_runner(config)
    _validate_kubeflow(config.kubeflow)


def _validate_beam_runner(config: Config) -> None:
    runner = config.run.beam_runner
    _choice("run.beam_runner", runner, BEAM_RUNNERS)
    missing = [key for key in BEAM_REQUIRED.get(runner, ()) if not getattr(config.beam, key)]
    if runner == "spark" and not (config.beam.job_endpoint or config.beam.spark_rest_url):
        missing.append("spark_rest_url")  # or job_endpoint: the job has to reach the cluster one way
    if missing:
        raise ConfigError(f"run.beam_runner {runner!r} needs {', '.join(f'beam.{key}' for key in missing)}"
                          f"{' (or beam.job_endpoint)' if 'spark_rest_url' in missing else ''}; not set")
    if runner == "dataflow" and not config.beam.temp_location.startswith("gs://"):
        raise ConfigError(f"beam.temp_location must be a gs:// folder for Dataflow, got {config.beam.temp_location!r}")


def _validate_kubeflow(kubeflow: KubeflowConfig) -> None:
    _choice("kubeflow.module_source", kubeflow.module_source, MODULE_SOURCES)
    # The steps' ids are checked against the DAG when it compiles (pipeline/kfp_compile.py): they live above here.
    steps = [entry.step for entry in kubeflow.step_resources]
    if "" in steps or len(set(steps)) != len(steps):
        raise ConfigError(f"kubeflow.step_resources must name each step once (`step: Trainer`), got {steps}")
    for entry in kubeflow.step_resources:
        for key in STEP_RESOURCE_KEYS:
            if getattr(entry, key) is not None:
                NUMERIC_SETTINGS[f"kubeflow.{key}"].admit(f"kubeflow.step_resources[{entry.step}].{key}",
                                                          getattr(entry, key))
    for step in (None, *steps):
        values = kubeflow.resources_of(step)
        for request, limit in (("cpu_request", "cpu_limit"), ("memory_request_gb", "memory_limit_gb")):
            if values[limit] and values[request] > values[limit]:
                where = "kubeflow" if step is None else f"kubeflow.step_resources[{step}] (with the defaults)"
                raise ConfigError(f"{where}: {request} {values[request]} is above {limit} {values[limit]}; "
                                  f"Kubernetes refuses such a pod (a limit of 0 means none)")
    if kubeflow.trainer_gpu_count and not kubeflow.trainer_gpu_type:
        raise ConfigError(f"kubeflow.trainer_gpu_count is {kubeflow.trainer_gpu_count} but kubeflow.trainer_gpu_type "
                          f"is empty: name the accelerator, e.g. nvidia.com/gpu")


def convolved_patch_side(config: Config) -> int:
    """What the CNN's valid 3x3 convolutions (each branch's, then the fused one) leave of a patch's side."""
    return config.ingest.patch_size - 2 * (len(config.model.branch_filters) + 1)
