"""The Evaluator's baseline: the model serving now, read from the serving dir instead of a TFX Resolver.

TFX's `Resolver(LatestBlessedModelStrategy)` compiles to KFP `resolver` steps that only Vertex AI executes; the
open-source Kubeflow Pipelines backend refuses the run. The serving dir holds exactly the blessed, pushed models,
so the newest version there is the baseline, on every runner. The candidate and the config are its inputs,
so the lookup runs again whenever the Evaluator would run again (a new model or new thresholds), and is cached
with it otherwise: a rerun of an unchanged configuration keeps its earlier verdict even if another configuration
published a model in between.

A serving model is a baseline only if its recalls mean the same thing: the same class table, bands, LiDAR
channels and patch size, read from its training record. Otherwise the candidate is its own baseline, so the
change checks pass by construction and only the absolute checks (floors, evidence, majority excess) judge it.
"""

import json
import logging
from dataclasses import dataclass
from typing import Any

# The TFX modules themselves, not the public alias `tfx.v1`, which also imports google.cloud.aiplatform (3-5 s on
# every run).
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import io_utils, path_utils

from foundation.config import Config
from foundation.published import latest_published, training_record_or_none

BASELINE_SOURCE_PROPERTY = "baseline_source"  # why this baseline, in words (for the run summary)
BASELINE_COMPARABLE_PROPERTY = "baseline_comparable"  # 1: the serving model; 0: the candidate itself


def compatibility_problems(record: dict[str, Any] | None, config: Config) -> list[str]:
    """Why a model with this training record cannot be compared with one trained under `config` (empty: it can).
    A model without a record (pushed by hand, or by older code) is never comparable."""
    if record is None:
        return ["it has no terrafuse training record"]
    trained = record.get("config", {})
    pairs = (
        ("class ids", [entry.get("id") for entry in record.get("class_table", [])], list(config.class_ids)),
        ("multispectral bands", trained.get("streams", {}).get("multispectral_bands"),
         list(config.streams.multispectral_bands)),
        ("LiDAR channels", trained.get("streams", {}).get("lidar_channels"), list(config.streams.lidar_channels)),
        ("patch size", trained.get("ingest", {}).get("patch_size"), config.ingest.patch_size),
    )
    return [f"{what} {theirs} (serving) vs {ours} (this run)" for what, theirs, ours in pairs if theirs != ours]


@dataclass(frozen=True)
class BaselineChoice:
    model_dir: str
    comparable: bool  # False: the candidate is its own baseline
    why: str


def choose_baseline(candidate_dir: str, serving_dir: str, config: Config) -> BaselineChoice:
    """The newest published version if it is comparable with `config`, else the candidate itself."""
    published = latest_published(serving_dir)
    if not published:
        return BaselineChoice(candidate_dir, False,
                              f"nothing published in {serving_dir} yet: the candidate is its own baseline")
    problems = compatibility_problems(training_record_or_none(published), config)
    if problems:
        return BaselineChoice(candidate_dir, False,
                              f"published version {published} is not comparable ({'; '.join(problems)}): the "
                              "candidate is its own baseline, only the absolute checks judge it")
    return BaselineChoice(published, True, f"published version {published}")


@component
def PublishedBaseline(
    model: InputArtifact[standard_artifacts.Model],
    baseline: OutputArtifact[standard_artifacts.Model],
    serving_dir: Parameter[str],
    config_json: Parameter[str],
) -> None:
    """Copies the baseline (`choose_baseline`) into a Model artifact the Evaluator can load. `config_json` is
    `config.restricted("streams", "ingest", "gate")`: what comparability needs, and the gate for the cache."""
    choice = choose_baseline(path_utils.serving_model_path(model.uri), serving_dir,
                             Config.from_dict(json.loads(config_json)))
    logging.info("Evaluator baseline: %s", choice.why)
    io_utils.copy_dir(choice.model_dir, path_utils.serving_model_dir(baseline.uri))
    baseline.set_string_custom_property(BASELINE_SOURCE_PROPERTY, choice.why)
    baseline.set_int_custom_property(BASELINE_COMPARABLE_PROPERTY, int(choice.comparable))
