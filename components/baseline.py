"""The Evaluator's baseline: the model serving now, read from the serving dir instead of a TFX Resolver.

TFX's `Resolver(LatestBlessedModelStrategy)` compiles to KFP `resolver` steps that only Vertex AI executes; the
open-source Kubeflow Pipelines backend refuses the run. The serving dir holds exactly the blessed, pushed models,
so the newest version there is the baseline, on every runner. The candidate and the config are its inputs,
so the lookup runs again whenever the Evaluator would run again (a new model or new thresholds), and is cached
with it otherwise.

The Pusher publishes only over the version that was newest when the baseline was chosen: the lookup writes it
beside the baseline (NEWEST_VERSION_FILE), and the Evaluator names the baseline on its blessing. When a version
came since, the push is refused, and the next run must judge again rather than reuse the cached verdict: the
newest version published from outside this pipeline root (`published_elsewhere`) is a parameter, so it is in the
cache key. Versions this pipeline root published are left out of it, or its own push would make every rerun
evaluate again; a push made stale by another run of the same pipeline root at the same time (one ML Metadata
store) is judged again with `run.enable_cache: false`.

A serving model is a baseline only if its recalls mean the same thing: the same class table, bands, LiDAR
channels and patch size, read from its training record. Otherwise the candidate is its own baseline, so the
change checks pass by construction and only the absolute checks (floors, evidence, majority excess) judge it.
"""

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

# The TFX modules themselves, not the public alias `tfx.v1`, which also imports google.cloud.aiplatform (3-5 s on
# every run).
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tfx.utils import io_utils, path_utils

from foundation.config import Config
from foundation.published import model_versions, published_source, training_record_or_none

BASELINE_SOURCE_PROPERTY = "baseline_source"  # why this baseline, in words (for the run summary)
BASELINE_COMPARABLE_PROPERTY = "baseline_comparable"  # 1: the serving model; 0: the candidate itself
# In the baseline artifact's folder: {"newest_version": the newest published version when it was chosen, "": none}.
NEWEST_VERSION_FILE = "terrafuse_newest_version.json"


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
    newest_version: str  # the newest published version at the choice, "" for none: pushes need it still newest


def choose_baseline(candidate_dir: str, serving_dir: str, config: Config) -> BaselineChoice:
    """The newest published version if it is comparable with `config`, else the candidate itself."""
    versions = model_versions(serving_dir)
    if not versions:
        return BaselineChoice(candidate_dir, False,
                              f"nothing published in {serving_dir} yet: the candidate is its own baseline", "")
    published = os.path.join(serving_dir, versions[-1])
    problems = compatibility_problems(training_record_or_none(published), config)
    if problems:
        return BaselineChoice(candidate_dir, False,
                              f"published version {published} is not comparable ({'; '.join(problems)}): the "
                              "candidate is its own baseline, only the absolute checks judge it", versions[-1])
    return BaselineChoice(published, True, f"published version {published}", versions[-1])


def newest_version_at_choice(baseline_uri: str) -> str:
    """What PublishedBaseline wrote beside the baseline at `baseline_uri`: the version then newest, "" for none."""
    return json.loads(io_utils.read_string_file(os.path.join(baseline_uri, NEWEST_VERSION_FILE)))["newest_version"]


def newest_published_elsewhere(serving_dir: str, pipeline_root: str) -> str:
    """The newest version not published from a model under `pipeline_root` (a version pushed by hand counts),
    "" for none: PublishedBaseline's cache key (see above)."""
    for version in reversed(model_versions(serving_dir)):
        source = published_source(os.path.join(serving_dir, version))
        if source is None or not source.startswith(os.path.join(pipeline_root, "")):
            return version
    return ""


@component
def PublishedBaseline(
    model: InputArtifact[standard_artifacts.Model],
    baseline: OutputArtifact[standard_artifacts.Model],
    serving_dir: Parameter[str],
    config_json: Parameter[str],
    published_elsewhere: Parameter[str] = "",
) -> None:
    """Copies the baseline (`choose_baseline`) into a Model artifact the Evaluator can load. `config_json` is
    `config.restricted("streams", "ingest", "gate")`: what comparability needs, and the gate for the cache.
    `published_elsewhere` (`newest_published_elsewhere` when the DAG was built) is only read by the cache."""
    choice = choose_baseline(path_utils.serving_model_path(model.uri), serving_dir,
                             Config.from_dict(json.loads(config_json)))
    logging.info("Evaluator baseline: %s", choice.why)
    io_utils.copy_dir(choice.model_dir, path_utils.serving_model_dir(baseline.uri))
    io_utils.write_string_file(os.path.join(baseline.uri, NEWEST_VERSION_FILE),
                               json.dumps({"newest_version": choice.newest_version}))
    baseline.set_string_custom_property(BASELINE_SOURCE_PROPERTY, choice.why)
    baseline.set_int_custom_property(BASELINE_COMPARABLE_PROPERTY, int(choice.comparable))
