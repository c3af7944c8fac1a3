"""Scene ExampleGen: a file-based TFX ExampleGen whose Beam source is one scene folder per element.

Each scene's streams are aligned on the multispectral grid, labelled pixels are sampled and cut into patches
(components.scenes / components.patches). Train and eval are split on `block_id`, a coarse spatial tile, so
neighbouring patches never straddle the split. A bad scene never stops the others being read: every bad scene
of the run is reported together, then the run fails (or, with `ingest.on_bad_scene: skip`, goes on without them).
"""
from __future__ import annotations

import json
import logging
import os
import zlib
from typing import Any, Iterable

import apache_beam as beam
import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2, struct_pb2
from tfx.components import FileBasedExampleGen
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from components.patches import encode_examples, sample_pixels
from components.scenes import SceneError, load_scene, scene_dirs
from pipeline.config import Config
from transforms.features import BLOCK_ID

_ERRORS = "errors"


class BadScenesError(RuntimeError):
    """Raised once per run with every bad scene's problem."""


def custom_config_proto(config: Config) -> example_gen_pb2.CustomConfig:
    """ExampleGen only carries a proto Any: the config travels as JSON inside a Struct."""
    packed = any_pb2.Any()
    packed.Pack(struct_pb2.Struct(fields={"config": struct_pb2.Value(string_value=config.to_json())}))
    return example_gen_pb2.CustomConfig(custom_config=packed)


def config_from_exec_properties(exec_properties: dict[str, Any]) -> Config:
    custom = example_gen_pb2.CustomConfig()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.CUSTOM_CONFIG_KEY], custom)
    struct = struct_pb2.Struct()
    custom.custom_config.Unpack(struct)
    return Config.from_dict(json.loads(struct.fields["config"].string_value))


def scene_rng(config: Config, scene_id: str) -> np.random.Generator:
    """Sampling depends on the seed and the scene only, not on the order Beam meets the scenes in."""
    return np.random.default_rng([config.ingest.sampling_seed, zlib.crc32(scene_id.encode())])


def scene_examples(scene_dir: str, config: Config) -> list[bytes]:
    """Serialized tf.Examples of one scene; raises SceneError naming the scene and file on bad input."""
    rasters = load_scene(scene_dir, config)
    rows, cols = sample_pixels(rasters.labels, config, scene_rng(config, rasters.scene_id))
    if rasters.filled_cells:
        logging.info("scene %s: LiDAR cells without points filled: %s", rasters.scene_id, rasters.filled_cells)
    logging.info("scene %s: %d patches", rasters.scene_id, len(rows))
    return encode_examples(rasters, rows, cols, config)


class _ReadScene(beam.DoFn):
    def __init__(self, config_json: str):
        self._config_json = config_json
        self._config: Config | None = None

    def setup(self) -> None:
        self._config = Config.from_dict(json.loads(self._config_json))

    def process(self, scene_dir: str) -> Iterable[Any]:
        try:
            serialized = scene_examples(scene_dir, self._config)
        except SceneError as err:
            yield beam.pvalue.TaggedOutput(_ERRORS, str(err))
            return
        for record in serialized:
            yield tf.train.Example.FromString(record)


def report_bad_scenes(errors: list[str], scene_count: int, on_bad_scene: str) -> None:
    """Fails the run listing every bad scene, unless skipping was asked for and some scene was good."""
    if not errors:
        return
    listing = "\n  ".join(sorted(errors))
    summary = f"{len(errors)} of {scene_count} scenes are bad:\n  {listing}"
    if on_bad_scene == "skip" and len(errors) < scene_count:
        logging.warning("%s\nContinuing without them (ingest.on_bad_scene: skip).", summary)
        return
    raise BadScenesError(summary)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(tf.train.Example)
def _ScenesToExamples(pipeline: beam.Pipeline, exec_properties: dict[str, Any], split_pattern: str):
    config = config_from_exec_properties(exec_properties)
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    matched = fileio.glob(os.path.join(input_base, split_pattern))
    scenes = [str(path) for path in scene_dirs(matched)]
    if not scenes:
        raise BadScenesError(f"{os.path.join(input_base, split_pattern)}: no scene folders match")
    logging.info("Reading %d scenes under %s", len(scenes), os.path.join(input_base, split_pattern))
    results = (
        pipeline
        | "Scenes" >> beam.Create(scenes, reshuffle=True)
        | "ReadScenes" >> beam.ParDo(_ReadScene(config.to_json())).with_outputs(_ERRORS, main="examples")
    )
    _ = (
        results[_ERRORS]
        | "CollectErrors" >> beam.combiners.ToList()
        | "ReportBadScenes" >> beam.Map(report_bad_scenes, len(scenes), config.ingest.on_bad_scene)
    )
    return results.examples


class Executor(BaseExampleGenExecutor):
    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _ScenesToExamples


def SceneExampleGen(config: Config) -> FileBasedExampleGen:
    """The ingestion component: newest span under config.run.data_root, split spatially on block_id."""
    return FileBasedExampleGen(
        input_base=os.path.abspath(config.run.data_root),
        input_config=example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name="scenes", pattern=config.ingest.split_pattern)]
        ),
        output_config=example_gen_pb2.Output(
            split_config=example_gen_pb2.SplitConfig(
                splits=[
                    example_gen_pb2.SplitConfig.Split(name="train", hash_buckets=config.ingest.train_hash_buckets),
                    example_gen_pb2.SplitConfig.Split(name="eval", hash_buckets=config.ingest.eval_hash_buckets),
                ],
                partition_feature_name=BLOCK_ID,
            )
        ),
        custom_config=custom_config_proto(config),
        custom_executor_spec=executor_spec.BeamExecutorSpec(Executor),
    ).with_id("SceneExampleGen")
