"""The Evaluator's baseline: the model serving now, read from the serving dir instead of a TFX Resolver.

TFX's `Resolver(LatestBlessedModelStrategy)` compiles to KFP `resolver` steps that only Vertex AI executes; the
open-source Kubeflow Pipelines backend refuses the run. The serving dir holds exactly the blessed, pushed models,
so the newest version there is the baseline, on every runner. The candidate is an input so the lookup runs
again whenever a new model is trained, and is cached with it otherwise.
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
) -> None:
    """Copies the newest published model (or the candidate) into a Model artifact the Evaluator can load."""
    source, why = baseline_source(path_utils.serving_model_path(model.uri), serving_dir)
    logging.info("Evaluator baseline: %s", why)
    io_utils.copy_dir(source, path_utils.serving_model_dir(baseline.uri))
    baseline.set_string_custom_property(BASELINE_SOURCE_PROPERTY, why)
