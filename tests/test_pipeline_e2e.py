"""The whole pipeline on LocalDagRunner + Beam DirectRunner, on small generated scenes.

The runs share one pipeline root and happen in order, as a user's would: a fresh run blesses and pushes; a
rerun is cached; a run whose model collapses is refused and leaves the pushed version alone; a span whose
label distribution drifted, and one whose red band came in another scale, are stopped before Transform.
"""
import glob
import os

import numpy as np
import pytest
import rasterio
import tensorflow as tf

from conftest import output_uri, tree_digest
from foundation.config import TEST, Config
from foundation.published import PROBABILITIES, SERVING_SIGNATURE, model_versions
from foundation.scene_folder import MULTISPECTRAL_FILE, span_folder
from models.evaluation import read_evaluation
from models.metrics import argmax_recalls
from pipeline.component_ids import BASELINE, DRIFT_GATE, EVALUATOR, SCENE_EXAMPLE_GEN, TRAINER, TRANSFORM
from pipeline.local import run_local
from pipeline.summary import last_run
from synth.scenes import generate_sample
from transforms.features import LABEL

pytestmark = pytest.mark.slow


def states(config):
    return {run.node: run.state for run in last_run(config)}


@pytest.fixture(scope="module")
def config(e2e_config):
    return e2e_config


def test_fresh_run_blesses_and_pushes_one_version(config, first_run):
    ok, evaluation = first_run
    assert ok
    assert evaluation.blessed, evaluation.failures
    assert min(evaluation.per_class_recall.values()) >= config.gate.min_class_recall
    assert len(model_versions(config.serving_dir)) == 1


def test_pushed_model_reproduces_the_evaluators_recalls(config, first_run):
    _, evaluation = first_run
    (version,) = model_versions(config.serving_dir)
    model = tf.saved_model.load(os.path.join(config.serving_dir, version))
    eval_files = glob.glob(os.path.join(output_uri(config, SCENE_EXAMPLE_GEN, "examples"), f"Split-{TEST}", "*.gz"))
    serialized = np.concatenate([b.numpy() for b in tf.data.TFRecordDataset(eval_files, "GZIP").batch(4096)])
    labels = tf.io.parse_example(serialized, {LABEL: tf.io.FixedLenFeature([], tf.int64)})[LABEL].numpy()
    probabilities = model.signatures[SERVING_SIGNATURE](examples=tf.constant(serialized))[PROBABILITIES].numpy()
    label_index = np.searchsorted(config.class_ids, labels)
    recalls = argmax_recalls(label_index, probabilities, len(config.class_ids))
    np.testing.assert_allclose(recalls, list(evaluation.per_class_recall.values()), atol=1e-6)


def test_rerun_is_served_from_cache(config, first_run):
    assert run_local(config)
    found = states(config)
    assert set(found.values()) == {"CACHED"}, found
    assert len(model_versions(config.serving_dir)) == 1


def test_collapsed_model_is_refused_and_the_pushed_version_is_untouched(config, refused_run):
    collapsed, summary, version, before = (refused_run.config, refused_run.printed, refused_run.version,
                                           refused_run.version_digest_before)
    assert "NOT BLESSED" in summary and "below its floor" in summary, summary
    evaluation = read_evaluation(output_uri(collapsed, EVALUATOR, "evaluation"), collapsed)
    assert evaluation.majority_prediction_share > 0.95
    assert not evaluation.blessed
    assert any(recall < config.gate.min_class_recall for recall in evaluation.per_class_recall.values())
    assert any("below its floor" in failure for failure in evaluation.failures)
    assert model_versions(config.serving_dir) == [version]
    assert tree_digest(os.path.join(config.serving_dir, version)) == before
    # The new model was compared with the published one (the baseline is a copy of it), not with itself.
    assert tree_digest(os.path.join(output_uri(collapsed, BASELINE, "baseline"), "Format-Serving")) == before


def test_drifted_span_is_stopped_before_transform(config, refused_run, capsys):
    versions = model_versions(config.serving_dir)
    generate_sample(config.run.data_root, Config(), spans=2, scenes_per_span=4, seed=1, shifted_span=2)
    assert not run_local(config)
    found = states(config)
    assert found[DRIFT_GATE] == "FAILED"
    assert TRANSFORM not in found and TRAINER not in found
    out = capsys.readouterr().out
    assert "last blessed model's training data vs this span's training data" in out
    assert model_versions(config.serving_dir) == versions


def test_a_span_with_its_red_band_in_another_scale_is_stopped_before_transform(config, first_run, capsys):
    """The newest span is span 1 again, but delivered with its red band a tenth of the scale: labels unchanged."""
    versions = model_versions(config.serving_dir)
    red = config.streams.multispectral_bands.index("red") + 1
    for scene in sorted(glob.glob(os.path.join(config.run.data_root, span_folder(1), "*"))):
        target = os.path.join(config.run.data_root, span_folder(9), os.path.basename(scene))
        os.makedirs(target)
        for name in os.listdir(scene):
            with open(os.path.join(scene, name), "rb") as source, open(os.path.join(target, name), "wb") as copy:
                copy.write(source.read())
        with rasterio.open(os.path.join(target, MULTISPECTRAL_FILE), "r+") as image:
            image.write((image.read(red) * 0.1).astype(image.dtypes[red - 1]), red)
    capsys.readouterr()
    assert not run_local(config)
    found = states(config)
    assert found[DRIFT_GATE] == "FAILED", found
    assert TRANSFORM not in found and TRAINER not in found
    out = capsys.readouterr().out
    assert "ms_red" in out, out
    assert model_versions(config.serving_dir) == versions
