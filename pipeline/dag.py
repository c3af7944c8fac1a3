"""The terrafuse DAG, top to bottom, shared by every runner (LocalDagRunner and KubeflowV2DagRunner)."""
from __future__ import annotations

import glob
import hashlib
import os

from tensorflow_metadata.proto.v0 import path_pb2, schema_pb2
# The TFX modules themselves, not the public alias `tfx.v1`: that also imports tfx.v1.extensions and with it
# google.cloud.aiplatform, which a fully cached `terrafuse run` spent 3-5 s on (13.1 s -> 9.5 s without it).
from tfx.components.evaluator.component import Evaluator
from tfx.components.example_validator.component import ExampleValidator
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen
from tfx.components.statistics_gen.component import StatisticsGen
from tfx.components.trainer.component import Trainer
from tfx.components.transform.component import Transform
from tfx.dsl.io import fileio
from tfx.orchestration.pipeline import Pipeline
from tfx.proto import distribution_validator_pb2, trainer_pb2, transform_pb2

from components.atomic_pusher import AtomicPusher
from components.baseline import PublishedBaseline, newest_published_elsewhere
from components.data_gate import DataGate, DriftGate
from components.distribution_validator import DistributionValidator
from components.scene_example_gen import SceneExampleGen
from foundation.config import PROJECT_DIR, TEST, TRAIN, VALIDATION, Config, ConfigError, resolve_path
from models.evaluation import eval_config
from pipeline.beam_runners import beam_args
from pipeline.component_ids import (BASELINE, DATA_GATE, DRIFT_GATE, EVALUATOR, EXAMPLE_VALIDATOR, LABEL_SKEW_VALIDATOR,
                                    PUSHER, SCENE_EXAMPLE_GEN, SCHEMA_GEN, STATISTICS_GEN, TRAINER, TRANSFORM)
from schemas.curated import DEFAULT_SCHEMA_FILE, schema_feature_names
from transforms.features import LABEL, layout

# The user code of Transform and Trainer, as TFX's module files (kubeflow.module_source "wheel")...
TRANSFORM_MODULE = os.path.join(PROJECT_DIR, "transforms", "preprocessing.py")
TRAINER_MODULE = os.path.join(PROJECT_DIR, "models", "trainer.py")
# ... and by import path, from the installed project ("image": the image on Kubeflow, the venv in local runs).
PREPROCESSING_FN = "transforms.preprocessing.preprocessing_fn"
RUN_FN = "models.trainer.run_fn"
# The code each step's output depends on besides its config: a change here means a different output.
TRANSFORM_CODE = ("foundation", "transforms")
TRAINING_CODE = ("foundation", "models", "transforms")


def code_fingerprint(packages: tuple[str, ...], schema_path: str | None = None) -> str:
    """sha256 of the packages' Python source (and the schema): in a step's custom_config, so that TFX's cache key
    changes with the code, which a step naming its function by import path would not show otherwise."""
    digest = hashlib.sha256()
    for entry in packages:
        full = os.path.join(PROJECT_DIR, entry)
        for path in sorted(glob.glob(os.path.join(full, "*.py"))) if os.path.isdir(full) else [full]:
            digest.update(os.path.relpath(path, PROJECT_DIR).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    if schema_path:
        with fileio.open(schema_path, "rb") as f:  # the schema may be on a bucket
            digest.update(f.read())
    return digest.hexdigest()


def training_code_fingerprint(schema_path: str) -> str:
    """The training code and the schema, so the Trainer never reuses a model built by other code."""
    return code_fingerprint(TRAINING_CODE, schema_path)


def schema_file(config: Config) -> str:
    """The curated schema for this configuration; it must describe every stream feature the config asks for."""
    path = config.run.schema_file or str(DEFAULT_SCHEMA_FILE)
    missing = set(layout(config).stream_features) - schema_feature_names(path)
    if missing:
        raise ConfigError(f"{path}: schema has no entry for {sorted(missing)}; "
                         f"write one with `terrafuse schema --out FILE` and set run.schema_file")
    return os.path.abspath(path)


def label_skew_config(config: Config) -> distribution_validator_pb2.DistributionValidatorConfig:
    comparator = schema_pb2.FeatureComparator()
    comparator.infinity_norm.threshold = config.validation.label_skew_linf_max
    comparator.jensen_shannon_divergence.threshold = config.validation.label_skew_js_max
    return distribution_validator_pb2.DistributionValidatorConfig(
        default_slice_config=distribution_validator_pb2.DistributionValidatorConfig.DatasetConfig(
            feature=[distribution_validator_pb2.FeatureComparator(path=path_pb2.Path(step=[LABEL]),
                                                                  distribution_comparator=comparator)]
        )
    )


def create_pipeline(config: Config, metadata_connection_config=None, module_source: str = "image") -> Pipeline:
    """The whole DAG; runners add only where it runs (metadata store, orchestrator) and where Transform and Trainer
    find their code: "wheel", TFX packs each module file's folder into a wheel under the pipeline root, installed
    at every execution (~8 s per run, docs/kubeflow.md); "image", functions named by import path, the project being
    installed where they run, as it is in local runs."""
    if "://" in config.serving_dir:
        raise ConfigError(f"the serving dir {config.serving_dir} is a URI: it must be a POSIX path (a local disk or "
                          f"a mounted volume), because a push is an atomic rename; set run.serving_dir")
    schema = schema_file(config)
    example_gen = SceneExampleGen(config).with_id(SCENE_EXAMPLE_GEN)
    schema_gen = ImportSchemaGen(schema_file=schema).with_id(SCHEMA_GEN)
    statistics_gen = StatisticsGen(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"]
    ).with_id(STATISTICS_GEN)
    example_validator = ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    ).with_id(EXAMPLE_VALIDATOR)
    label_skew_validator = DistributionValidator(
        statistics=statistics_gen.outputs["statistics"],
        baseline_statistics=statistics_gen.outputs["statistics"],
        config=label_skew_config(config),
        include_split_pairs=[(VALIDATION, TRAIN), (TEST, TRAIN)],
    ).with_id(LABEL_SKEW_VALIDATOR)
    data_gate = DataGate(
        examples=example_gen.outputs["examples"],
        statistics=statistics_gen.outputs["statistics"],
        schema_anomalies=example_validator.outputs["anomalies"],
        distribution_anomalies=label_skew_validator.outputs["anomalies"],
        config_json=config.restricted("validation", "streams").to_json(),
    ).with_id(DATA_GATE)
    drift_gate = DriftGate(
        statistics=statistics_gen.outputs["statistics"],
        config_json=config.restricted("validation", "streams").to_json(),
        serving_dir=config.serving_dir,
    ).with_id(DRIFT_GATE)
    by_import_path = module_source == "image"
    transform = Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        module_file=None if by_import_path else os.path.normpath(TRANSFORM_MODULE),
        preprocessing_fn=PREPROCESSING_FN if by_import_path else None,
        custom_config={"config": config.restricted("streams", "ingest", "transform").to_dict(),
                       "code": code_fingerprint(TRANSFORM_CODE)},
        # StatisticsGen already describes the raw data; Transform's own pre/post statistics are a second pass.
        disable_statistics=True,
        # The Evaluator reads the raw test split through the model's own Transform graph: nothing to write for it.
        splits_config=transform_pb2.SplitsConfig(analyze=[TRAIN], transform=[TRAIN, VALIDATION]),
    ).with_id(TRANSFORM)
    transform.add_upstream_node(data_gate)
    transform.add_upstream_node(drift_gate)
    trainer = Trainer(
        module_file=None if by_import_path else os.path.normpath(TRAINER_MODULE),
        run_fn=RUN_FN if by_import_path else None,
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        hyperparameters=data_gate.outputs["training_labels"],
        train_args=trainer_pb2.TrainArgs(splits=[TRAIN]),
        eval_args=trainer_pb2.EvalArgs(splits=[VALIDATION]),
        custom_config={"config": config.restricted("streams", "ingest", "transform", "model").to_dict(),
                       # the Trainer reuses the serving model instead of training when no new data came
                       "serving_dir": config.serving_dir, "code": training_code_fingerprint(schema)},
    ).with_id(TRAINER)
    # The newest version from outside this pipeline root is in the baseline's cache key: after a push refused
    # because such a version came, the next run judges again (components/baseline.py).
    baseline = PublishedBaseline(
        model=trainer.outputs["model"], serving_dir=config.serving_dir,
        config_json=config.restricted("streams", "ingest", "gate").to_json(),
        published_elsewhere=newest_published_elsewhere(config.serving_dir, resolve_path(config.run.pipeline_root)),
    ).with_id(BASELINE)
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=baseline.outputs["baseline"],
        eval_config=eval_config(config),
        example_splits=[TEST],
    ).with_id(EVALUATOR)
    pusher = AtomicPusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"], serving_dir=config.serving_dir
    ).with_id(PUSHER)
    return Pipeline(
        pipeline_name=config.run.pipeline_name,
        pipeline_root=resolve_path(config.run.pipeline_root),
        components=[example_gen, schema_gen, statistics_gen, example_validator, label_skew_validator,
                    data_gate, drift_gate, transform, trainer, baseline, evaluator, pusher],
        enable_cache=config.run.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_args(config),
    )

