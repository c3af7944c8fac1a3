"""The Evaluator's baseline: the model serving now, read from the serving dir instead of a TFX Resolver.

TFX's `Resolver(LatestBlessedModelStrategy)` compiles to KFP `resolver` steps that only Vertex AI executes; the
open-source Kubeflow Pipelines backend refuses the run. The serving dir holds exactly the blessed, pushed models,
so the newest version there is the baseline, on every runner. The candidate and the gate config are its inputs,
so the lookup runs again whenever the Evaluator would run again (a new model or new thresholds), and is cached
with it otherwise: a rerun of an unchanged configuration keeps its earlier verdict even if another configuration
published a model in between.
"""

import logging

from tfx import v1 as tfx
from tfx.utils import io_utils, path_utils

from components.atomic_pusher import latest_published

BASELINE_SOURCE_PROPERTY = "baseline_source"


def baseline_source(candidate_dir: str, serving_dir: str) -> tuple[str, str]:
    """(model folder, why): the newest published version, else the candidate itself, whose comparison with
    itself passes the change thresholds (the absolute per-class floors still apply)."""
    published = latest_published(serving_dir)
    if published:
        return published, f"published version {published}"
    return candidate_dir, f"nothing published in {serving_dir} yet: the candidate is its own baseline"


@tfx.dsl.components.component
def PublishedBaseline(
    model: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Model],
    baseline: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Model],
    serving_dir: tfx.dsl.components.Parameter[str],
    gate_json: tfx.dsl.components.Parameter[str],
) -> None:
    """Copies the newest published model (or the candidate) into a Model artifact the Evaluator can load.
    `gate_json` (the Evaluator's thresholds) is here for the cache: new thresholds, a new lookup."""
    source, why = baseline_source(path_utils.serving_model_path(model.uri), serving_dir)
    logging.info("Evaluator baseline for the gate %s: %s", gate_json, why)
    io_utils.copy_dir(source, path_utils.serving_model_dir(baseline.uri))
    baseline.set_string_custom_property(BASELINE_SOURCE_PROPERTY, why)
