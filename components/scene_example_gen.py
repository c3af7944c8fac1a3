"""Scene ExampleGen: a file-based TFX ExampleGen whose Beam source is one scene folder per element.

Each scene's streams are aligned on the multispectral grid, labelled pixels are sampled and cut into patches
(components.scenes / components.patches). Train and eval are split on whole blocks (`block_id`, a coarse
spatial tile), so neighbouring patches never straddle the split, and the blocks are dealt so that every class
has the configured eval share (see assign_blocks). A bad scene never stops the others being read: every bad scene
of the run is reported together, then the run fails (or, with `ingest.on_bad_scene: skip`, goes on without them).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

import apache_beam as beam
import numpy as np
from google.protobuf import any_pb2, struct_pb2
from tfx.components import FileBasedExampleGen
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from components.patches import block_ids, encode_examples, sample_pixels
from components.scenes import SceneError, load_scene, scene_dirs
from pipeline.config import Config, resolve_path
from transforms.features import BLOCK_ID

_ERRORS = "errors"
_BLOCK_COUNTS = "block_counts"
_EXAMPLES = "examples"


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


@dataclass
class SceneExamples:
    serialized: list[bytes]
    blocks: list[bytes]  # block_id of each example
    labels: np.ndarray  # raw class id of each example


def scene_examples(scene_dir: str, config: Config) -> SceneExamples:
    """Every example of one scene; raises SceneError naming the scene and file on bad input."""
    rasters = load_scene(scene_dir, config)
    rows, cols = sample_pixels(rasters.labels, config, scene_rng(config, rasters.scene_id))
    if rasters.filled_cells:
        logging.info("scene %s: LiDAR cells without points filled: %s", rasters.scene_id, rasters.filled_cells)
    logging.info("scene %s: %d patches", rasters.scene_id, len(rows))
    return SceneExamples(
        serialized=encode_examples(rasters, rows, cols, config),
        blocks=block_ids(rasters.scene_id, rows, cols, config.ingest.block_size),
        labels=rasters.labels[rows, cols],
    )


def block_label_counts(examples: SceneExamples, class_ids: tuple[int, ...]) -> dict[bytes, np.ndarray]:
    index = {class_id: i for i, class_id in enumerate(class_ids)}
    counts: dict[bytes, np.ndarray] = {}
    for block, label in zip(examples.blocks, examples.labels.tolist()):
        counts.setdefault(block, np.zeros(len(class_ids), np.int64))[index[label]] += 1
    return counts


def assign_blocks(block_counts: dict[bytes, np.ndarray], fractions: list[float]) -> dict[bytes, int]:
    """Split index per block, so that each split holds its fraction of every class.

    Blocks are visited in the order of a hash of their id (reproducible, independent of scene order) and each
    goes to the split whose per-class shortfall it reduces most, relative to each class's total so rare
    classes count as much as common ones. A plain hash split leaves the label mix to chance: on the sample
    scenes its train-vs-eval L-infinity distance ranged from 0.04 to 0.32 with the seed.
    """
    if not block_counts:
        return {}
    totals = np.maximum(np.sum(list(block_counts.values()), axis=0), 1).astype(float)
    targets = np.outer(fractions, totals)
    filled = np.zeros_like(targets)
    assignment = {}
    for block in sorted(block_counts, key=lambda block: hashlib.sha256(block).digest()):
        counts = block_counts[block]
        relief = ((np.abs(filled - targets) - np.abs(filled + counts - targets)) / totals).sum(axis=1)
        split = int(np.argmax(relief))
        filled[split] += counts
        assignment[block] = split
    return assignment


def merge_block_counts(parts: Iterable[dict[bytes, np.ndarray]]) -> dict[bytes, np.ndarray]:
    merged: dict[bytes, np.ndarray] = {}
    for part in parts:
        for block, counts in part.items():
            merged[block] = merged[block] + counts if block in merged else counts
    return merged


class _ReadScene(beam.DoFn):
    """Emits (block_id, serialized example) and, tagged, the scene's label counts per block or its error."""

    def __init__(self, config_json: str):
        self._config_json = config_json
        self._config: Config | None = None

    def setup(self) -> None:
        self._config = Config.from_dict(json.loads(self._config_json))

    def process(self, scene_dir: str) -> Iterable[Any]:
        try:
            examples = scene_examples(scene_dir, self._config)
        except SceneError as err:
            yield beam.pvalue.TaggedOutput(_ERRORS, str(err))
            return
        yield beam.pvalue.TaggedOutput(_BLOCK_COUNTS, block_label_counts(examples, self._config.class_ids))
        yield from zip(examples.blocks, examples.serialized)


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
def _ScenesToExamples(pipeline: beam.Pipeline, exec_properties: dict[str, Any], split_pattern: str):
    """Scene folders matched by the pattern -> (block_id, serialized tf.Example), plus block label counts."""
    config = config_from_exec_properties(exec_properties)
    input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
    matched = fileio.glob(os.path.join(input_base, split_pattern))
    scenes = scene_dirs(matched)
    if not scenes:
        raise BadScenesError(f"{os.path.join(input_base, split_pattern)}: no scene folders match")
    logging.info("Reading %d scenes under %s", len(scenes), os.path.join(input_base, split_pattern))
    results = (
        pipeline
        | "Scenes" >> beam.Create(scenes, reshuffle=True)
        | "ReadScenes" >> beam.ParDo(_ReadScene(config.to_json())).with_outputs(
            _ERRORS, _BLOCK_COUNTS, main=_EXAMPLES)
    )
    _ = (
        results[_ERRORS]
        | "CollectErrors" >> beam.combiners.ToList()
        | "ReportBadScenes" >> beam.Map(report_bad_scenes, len(scenes), config.ingest.on_bad_scene)
    )
    return results


def resolve_newest_span(exec_properties: dict[str, Any]) -> dict[str, Any]:
    """The exec properties with `{SPAN}` resolved to the newest span, as TFX's ExampleGen driver does.

    LocalDagRunner and Vertex AI run that driver before the executor; the open-source Kubeflow Pipelines backend
    does not (it skips the spec's pre-cache check), so the pattern arrives unresolved. Already resolved
    properties come back unchanged.
    """
    input_config = example_gen_pb2.Input()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
    if not any("{SPAN" in split.pattern or "{VERSION" in split.pattern for split in input_config.splits):
        return exec_properties
    resolved = example_gen_driver.FileBasedDriver(metadata_handle=None).resolve_exec_properties(
        dict(exec_properties), None, None)
    logging.info("Resolved the newest span: %s (input fingerprint %s)", resolved[example_gen_utils.SPAN_PROPERTY_NAME],
                 resolved[example_gen_utils.FINGERPRINT_PROPERTY_NAME])
    return resolved


class Executor(BaseExampleGenExecutor):
    """Splits on whole blocks, stratified by label, instead of TFX's per-block hash (see assign_blocks)."""

    def Do(self, input_dict: dict[str, list[Any]], output_dict: dict[str, list[Any]],
           exec_properties: dict[str, Any]) -> None:
        resolved = resolve_newest_span(exec_properties)
        if resolved is not exec_properties:
            for examples in output_dict[standard_component_specs.EXAMPLES_KEY]:
                example_gen_driver.update_output_artifact(resolved, examples.mlmd_artifact)
        super().Do(input_dict, output_dict, resolved)

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _ScenesToExamples

    def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                               exec_properties: dict[str, Any]) -> dict[str, beam.pvalue.PCollection]:
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        output_config = example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
        splits = output_config.split_config.splits
        if len(input_config.splits) != 1 or output_config.split_config.partition_feature_name != BLOCK_ID:
            raise ValueError(f"SceneExampleGen reads one input split and partitions on {BLOCK_ID!r}")
        buckets = [split.hash_buckets for split in splits]
        fractions = [b / sum(buckets) for b in buckets]
        read = pipeline | "InputToRecord" >> _ScenesToExamples(exec_properties, input_config.splits[0].pattern)
        assignment = (
            read[_BLOCK_COUNTS]
            | "CollectBlockCounts" >> beam.combiners.ToList()
            | "AssignBlocks" >> beam.Map(lambda parts: assign_blocks(merge_block_counts(parts), fractions))
        )
        partitions = read[_EXAMPLES] | "SplitData" >> beam.Partition(
            lambda keyed, _, blocks: blocks[keyed[0]], len(splits), blocks=beam.pvalue.AsSingleton(assignment))
        return {
            split.name: partition | f"DropBlockId[{split.name}]" >> beam.Values()
            for split, partition in zip(splits, partitions)
        }


def SceneExampleGen(config: Config) -> FileBasedExampleGen:
    """The ingestion component: newest span under config.run.data_root, split spatially on block_id."""
    return FileBasedExampleGen(
        input_base=resolve_path(config.run.data_root),
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
        custom_config=custom_config_proto(config.restricted("streams", "ingest")),
        custom_executor_spec=executor_spec.BeamExecutorSpec(Executor),
    ).with_id("SceneExampleGen")
