"""The fused CNN, and run_fn end to end: real Transform graph in, servable SavedModel and TFMA gate out.

One module fixture runs the real preprocessing_fn with tf.Transform on Beam over a small, imbalanced,
separable synthetic set, then the real run_fn on its output. The exported model is then served on raw
examples without label and evaluated by TFMA with the Evaluator's own eval_config.
"""
import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
import tf_keras
from tensorflow_transform.tf_metadata import dataset_metadata
from tfx.components.trainer.fn_args_utils import FnArgs

from components.atomic_pusher import publish_atomically
from foundation.config import TEST, TRAIN, VALIDATION, Config, ConfigError, load_config
from foundation.published import (CLASS_ID, CLASS_INDEX, MAP_INPUT, MAP_SIGNATURE, PROBABILITIES, SERVING_INPUT,
                                  SERVING_SIGNATURE, TRAIN_STATISTICS_KEY, TRAINING_DATA_KEY, TRANSFORM_SIGNATURE,
                                  read_training_record, reusable_model, training_key)
from models import trainer as trainer_module
from models.evaluation import eval_config, read_evaluation
from models.fused_cnn import STREAMS_BY_MODE, build_model, tile_model
from models.metrics import argmax_recalls
from models.trainer import export_serving_model, run_fn
from transforms.features import (BLOCK_ID, COL, LABEL, LABEL_INDEX, LIDAR, MULTISPECTRAL, ROW, SCENE_ID, layout,
                                 raw_feature_spec)
from transforms.preprocessing import preprocessing_fn

CONFIG = Config().replace({
    "ingest.patch_size": 5, "model.branch_filters": [8], "model.fused_filters": 8, "model.dense_units": 16,
    "model.epochs": 6, "model.batch_size": 32, "model.learning_rate": 0.01, "model.class_weights": "inverse",
    "gate.min_test_examples_per_class": 5,
})
CODE = "fingerprint-of-the-training-code"
TRAIN_STATISTICS = "c3RhdGlzdGljcw=="  # the data gate's base64 statistics, carried through untouched
DATA = {"span": 3, "input_fingerprint": "split:scenes,num_files:9,total_bytes:1000,xor_checksum:7,sum_checksum:9"}
TRAIN_PER_CLASS = [120, 60, 30, 30, 20, 20]
EVAL_PER_CLASS = [30, 15, 10, 10, 8, 8]


# --- the model -------------------------------------------------------------------------------------


def _random_inputs(config, model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    lay = layout(config)
    return {name: rng.normal(size=(n, *lay.stream_shape(name))).astype(np.float32) for name in model.input_names}


def test_output_is_a_softmax_over_the_class_table():
    model = build_model(CONFIG)
    probabilities = model(_random_inputs(CONFIG, model), training=False).numpy()
    assert probabilities.shape == (4, len(CONFIG.class_ids))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("streams", ["fused", "multispectral", "lidar"])
def test_each_streams_mode_has_its_inputs(streams):
    config = CONFIG.replace({"model.streams": streams})
    model = build_model(config)
    assert sorted(model.input_names) == sorted(STREAMS_BY_MODE[streams])
    lay = layout(config)
    for tensor in model.inputs:
        assert tuple(tensor.shape[1:]) == lay.stream_shape(tensor.name.split(":")[0])
    assert model(_random_inputs(config, model), training=False).shape == (4, len(config.class_ids))


@pytest.mark.parametrize("streams", ["fused", "multispectral", "lidar"])
def test_centre_pixel_path_carries_exactly_the_centre_values(streams):
    """The pixel being classified reaches the dense layers unblurred: its own values of every stream, and only
    those (changing any other pixel of the window leaves them as they are)."""
    config = CONFIG.replace({"model.streams": streams})
    model = build_model(config)
    inputs = _random_inputs(config, model)
    centre = layout(config).patch_size // 2
    for stream in STREAMS_BY_MODE[streams]:
        path = tf_keras.Model(model.inputs, model.get_layer(f"{stream}_centre").output)
        np.testing.assert_array_equal(path(inputs).numpy()[:, 0, 0, :], inputs[stream][:, centre, centre, :])
        edited = {name: tensor.copy() for name, tensor in inputs.items()}
        edited[stream][:, 0, 0, :] += 1.0
        np.testing.assert_array_equal(path(edited).numpy(), path(inputs).numpy())
    without = build_model(config.replace({"model.centre_pixel_path": False}))
    assert not any(layer.name.endswith("_centre") for layer in without.layers)


@pytest.mark.parametrize("config", [CONFIG, CONFIG.replace({"model.centre_pixel_path": False}),
                                    CONFIG.replace({"model.streams": "lidar"}), Config()],
                         ids=["small", "without centre path", "lidar", "default"])
def test_tile_model_gives_every_pixel_its_own_patchs_probabilities(config):
    """Fully convolutional with the patch as receptive field: one pass over a tile equals the patch model on the
    patch around each pixel, and a pixel outside a patch never changes that patch's output."""
    model = build_model(config)
    tiles = tile_model(model, config)
    p = layout(config).patch_size
    rng = np.random.default_rng(3)
    tile = {name: rng.normal(size=(1, 13, 11, layout(config).stream_shape(name)[-1])).astype(np.float32)
            for name in model.input_names}
    mapped = tiles(tile, training=False).numpy()[0]
    assert mapped.shape == (13 - p + 1, 11 - p + 1, len(config.class_ids))
    windows = [(i, j) for i in range(mapped.shape[0]) for j in range(mapped.shape[1])]
    patches = {name: np.stack([tile[name][0, i:i + p, j:j + p] for i, j in windows]) for name in tile}
    per_patch = model(patches, training=False).numpy()
    np.testing.assert_allclose(mapped.reshape(-1, mapped.shape[-1]), per_patch, rtol=1e-4, atol=1e-6)


def test_patch_too_small_for_the_convolutions_is_refused_when_a_run_starts_and_when_the_model_is_built():
    with pytest.raises(ConfigError, match="patch_size 3 is too small for the model"):
        load_config(None, ["ingest.patch_size=3", "ingest.block_size=8"])
    with pytest.raises(ConfigError, match="patch_size 3 is too small for the model"):
        build_model(CONFIG.replace({"ingest.patch_size": 3}))


def test_a_components_restricted_config_may_pair_a_small_patch_with_the_default_model():
    """Transform and ingestion get the run's patch size with the model section at its defaults: a 5 px patch with
    a one-convolution model is a valid run, and its restricted configs must load where the components read them."""
    small = load_config(None, ["ingest.patch_size=5", "model.branch_filters=[16]"])
    restricted = small.restricted("streams", "ingest", "transform")
    assert Config.from_dict(restricted.to_dict()).ingest.patch_size == 5


def test_no_normalisation_inside_the_model():
    layer_types = {type(layer).__name__ for layer in build_model(Config()).layers}
    assert not layer_types & {"BatchNormalization", "LayerNormalization", "Normalization", "Rescaling"}


def test_initial_weights_follow_the_seed():
    first, again = build_model(CONFIG), build_model(CONFIG)
    other = build_model(CONFIG.replace({"model.seed": 1}))
    for a, b in zip(first.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    kernels = [w for w in first.get_weights() if w.ndim > 1]
    assert not any(np.array_equal(a, b) for a, b in zip(kernels, [w for w in other.get_weights() if w.ndim > 1]))


# --- run_fn end to end ------------------------------------------------------------------------------


def _raw_rows(config, per_class, rng):
    """Raw examples on ingestion scales (reflectance x 10000, metres): class k shifts band k and the height."""
    lay = layout(config)
    rows = []
    for index, (class_id, n) in enumerate(zip(config.class_ids, per_class)):
        for i in range(n):
            row = {name: rng.normal(1500 + 400 * (b == index % len(lay.multispectral)), 150, lay.patch_values)
                   for b, name in enumerate(lay.multispectral)}
            row.update({name: np.abs(rng.normal(2.0 * index if c == 0 else 100, 1.0, lay.patch_values))
                        for c, name in enumerate(lay.lidar)})
            row = {k: v.astype(np.float32) for k, v in row.items()}
            row.update({LABEL: class_id, SCENE_ID: b"scene", BLOCK_ID: b"scene/0_0", ROW: i, COL: index})
            rows.append(row)
    rng.shuffle(rows)
    return rows


def _serialize(row, spec):
    feature = {}
    for name in spec:
        value = np.atleast_1d(row[name])
        if spec[name].dtype == tf.float32:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=value))
        elif spec[name].dtype == tf.int64:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=value))
        else:
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=list(value)))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _transform(config, root, train_rows, eval_rows):
    """The real preprocessing_fn on Beam: transform graph plus gzipped transformed examples, as TFX writes."""
    metadata = dataset_metadata.DatasetMetadata.from_feature_spec(raw_feature_spec(config))
    fn = lambda inputs: preprocessing_fn(inputs, custom_config={"config": config.to_dict()})  # noqa: E731
    with beam.Pipeline() as p, tft_beam.Context(temp_dir=os.path.join(root, "tmp")):
        (train, transformed_metadata), transform_fn = (
            (p | "Train" >> beam.Create(train_rows), metadata) | tft_beam.AnalyzeAndTransformDataset(fn))
        evaluation, _ = ((p | "Eval" >> beam.Create(eval_rows), metadata), transform_fn) | tft_beam.TransformDataset()
        coder = tft.coders.ExampleProtoCoder(transformed_metadata.schema)
        for name, rows in ((TRAIN, train), (VALIDATION, evaluation)):
            _ = (rows | f"Encode{name}" >> beam.Map(coder.encode)
                 | f"Write{name}" >> beam.io.WriteToTFRecord(os.path.join(root, name), file_name_suffix=".gz"))
        graph = os.path.join(root, "transform_graph")
        _ = transform_fn | tft_beam.WriteTransformFn(graph)
        _ = metadata | tft_beam.WriteMetadata(os.path.join(graph, tft.TFTransformOutput.RAW_METADATA_DIR), p)
    return graph


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("trainer"))
    rng = np.random.default_rng(0)
    train_rows, eval_rows = _raw_rows(CONFIG, TRAIN_PER_CLASS, rng), _raw_rows(CONFIG, EVAL_PER_CLASS, rng)
    transform_graph = _transform(CONFIG, root, train_rows, eval_rows)
    counts = {split: {str(c): n for c, n in zip(CONFIG.class_ids, per_class)}
              for split, per_class in ((TRAIN, TRAIN_PER_CLASS), (VALIDATION, EVAL_PER_CLASS), (TEST, EVAL_PER_CLASS))}
    serving_model_dir = os.path.join(root, "model", "Format-Serving")
    fn_args = dict(
        train_files=[os.path.join(root, f"{TRAIN}*.gz")], eval_files=[os.path.join(root, f"{VALIDATION}*.gz")],
        transform_graph_path=transform_graph, serving_model_dir=serving_model_dir,
        model_run_dir=os.path.join(root, "model_run"),
        hyperparameters={**counts, TRAINING_DATA_KEY: DATA, TRAIN_STATISTICS_KEY: TRAIN_STATISTICS},
        custom_config={"config": CONFIG.to_dict(), "serving_dir": os.path.join(root, "nothing_published"),
                       "code": CODE})
    run_fn(FnArgs(**fn_args))
    raw_eval_file = os.path.join(root, "raw_eval.tfrecord")
    with tf.io.TFRecordWriter(raw_eval_file) as writer:
        for row in eval_rows:
            writer.write(_serialize(row, raw_feature_spec(CONFIG)))
    return dict(root=root, serving_model_dir=serving_model_dir, transform_graph=transform_graph,
                eval_rows=eval_rows, raw_eval_file=raw_eval_file, counts=counts, fn_args=fn_args)


def _serve(serving_model_dir, rows):
    """serving_default on serialized raw examples WITHOUT label or metadata."""
    serving_spec = raw_feature_spec(CONFIG, with_label=False, with_metadata=False)
    signature = tf.saved_model.load(serving_model_dir).signatures[SERVING_SIGNATURE]
    serialized = tf.constant([_serialize(row, serving_spec) for row in rows])
    return {k: v.numpy() for k, v in signature(**{SERVING_INPUT: serialized}).items()}


def _label_indices(rows):
    return np.array([CONFIG.class_ids.index(row[LABEL]) for row in rows])


def test_serving_default_on_raw_examples_without_label(trained):
    out = _serve(trained["serving_model_dir"], trained["eval_rows"])
    n = len(trained["eval_rows"])
    assert out[PROBABILITIES].shape == (n, len(CONFIG.class_ids)) and out[PROBABILITIES].dtype == np.float32
    np.testing.assert_allclose(out[PROBABILITIES].sum(axis=1), 1.0, rtol=1e-5)
    assert out[CLASS_INDEX].dtype == out[CLASS_ID].dtype == np.int64
    np.testing.assert_array_equal(out[CLASS_INDEX], out[PROBABILITIES].argmax(axis=1))
    np.testing.assert_array_equal(out[CLASS_ID], np.array(CONFIG.class_ids)[out[CLASS_INDEX]])
    # Separable data, inverse class weights: every class, the rarest included, is learnt.
    recalls = argmax_recalls(_label_indices(trained["eval_rows"]), out[PROBABILITIES], len(CONFIG.class_ids))
    assert recalls.min() >= CONFIG.gate.min_class_recall, recalls


def test_transform_features_signature_gives_the_label_index(trained):
    signature = tf.saved_model.load(trained["serving_model_dir"]).signatures[TRANSFORM_SIGNATURE]
    rows = trained["eval_rows"][:5]
    out = signature(**{SERVING_INPUT: tf.constant([_serialize(r, raw_feature_spec(CONFIG)) for r in rows])})
    np.testing.assert_array_equal(out[LABEL_INDEX].numpy(), _label_indices(rows))
    assert out[MULTISPECTRAL].shape == (5, *layout(CONFIG).stream_shape(MULTISPECTRAL))
    assert out[LIDAR].shape == (5, *layout(CONFIG).stream_shape(LIDAR))


def test_map_tile_signature_agrees_with_serving_default(trained):
    """The mapping signature runs the same Transform graph and weights over a whole tile of raw values: every
    window gets serving_default's probabilities for the example cut from it."""
    lay = layout(CONFIG)
    p = lay.patch_size
    rows = trained["eval_rows"][:12]
    # A 12-patch-wide strip of real raw patches side by side, so windows straddle patches too.
    tile = np.concatenate([np.stack([row[name].reshape(p, p) for name in lay.stream_features], axis=-1)
                           for row in rows], axis=1)
    signature = tf.saved_model.load(trained["serving_model_dir"]).signatures[MAP_SIGNATURE]
    mapped = signature(**{MAP_INPUT: tf.constant(tile)})[PROBABILITIES].numpy()
    assert mapped.shape == (1, tile.shape[1] - p + 1, len(CONFIG.class_ids))
    windows = [{name: tile[:, j:j + p, i].reshape(-1) for i, name in enumerate(lay.stream_features)}
               for j in range(mapped.shape[1])]
    served = _serve(trained["serving_model_dir"], windows)[PROBABILITIES]
    np.testing.assert_allclose(mapped[0], served, rtol=1e-4, atol=1e-6)
    assert (mapped[0, ::p].argmax(axis=1) == _serve(trained["serving_model_dir"], rows)[CLASS_INDEX]).all()


def test_without_a_gpu_the_trainer_uses_the_default_strategy():
    assert not tf.config.list_logical_devices("GPU")  # these machines: the GPU branch is exercised below
    assert trainer_module.training_strategy() is tf.distribute.get_strategy()


def test_trainer_under_a_mirrored_strategy_trains_and_exports_the_same_signatures(trained, tmp_path, monkeypatch):
    """What a GPU node runs: the model built under MirroredStrategy (here over the one CPU) trains with the class
    weights and exports every signature the default strategy exports."""
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    monkeypatch.setattr(trainer_module, "training_strategy", lambda: mirrored)
    built_under = []

    def build_and_note_the_strategy(config):
        built_under.append(tf.distribute.get_strategy())
        return build_model(config)

    monkeypatch.setattr(trainer_module, "build_model", build_and_note_the_strategy)
    serving_model_dir = str(tmp_path / "mirrored" / "Format-Serving")
    config = CONFIG.replace({"model.epochs": 3})
    run_fn(FnArgs(**{**trained["fn_args"], "serving_model_dir": serving_model_dir,
                     "custom_config": {"config": config.to_dict(), "serving_dir": str(tmp_path / "none")}}))
    assert built_under == [mirrored]
    signatures = set(tf.saved_model.load(serving_model_dir).signatures)
    assert signatures == set(tf.saved_model.load(trained["serving_model_dir"]).signatures)
    assert {SERVING_SIGNATURE, TRANSFORM_SIGNATURE, MAP_SIGNATURE} <= signatures
    out = _serve(serving_model_dir, trained["eval_rows"])
    recalls = argmax_recalls(_label_indices(trained["eval_rows"]), out[PROBABILITIES], len(CONFIG.class_ids))
    assert recalls.min() >= CONFIG.gate.min_class_recall, recalls


def test_training_record_travels_with_the_model(trained):
    record = read_training_record(trained["serving_model_dir"])
    assert record["label_counts"] == trained["counts"]
    assert [c["id"] for c in record["class_table"]] == list(CONFIG.class_ids)
    assert record["class_weights"]["mode"] == "inverse"
    # inverse: N / (K n_k) with N = 280, K = 6
    assert record["class_weights"]["by_class_id"]["10"] == pytest.approx(280 / (6 * 120))
    assert Config.from_dict(record["config"]) == CONFIG
    assert 1 <= record["best_epoch"] <= record["epochs_run"] <= CONFIG.model.epochs
    assert os.listdir(os.path.join(trained["root"], "model_run"))  # TensorBoard logs
    assert record["data"] == DATA and record["training_key"] == training_key(DATA, CONFIG.to_dict(), CODE)
    assert record[TRAIN_STATISTICS_KEY] == TRAIN_STATISTICS  # the next span's drift check compares with it
    with pytest.raises(FileNotFoundError, match="no training record"):
        read_training_record(trained["root"])


def test_no_new_data_reuses_the_serving_model_instead_of_training(trained, tmp_path, monkeypatch):
    serving = str(tmp_path / "serving")
    published = publish_atomically(trained["serving_model_dir"], serving)

    def no_training(config):
        raise AssertionError("the Trainer built a model although the serving one was trained on the same data")

    monkeypatch.setattr(trainer_module, "build_model", no_training)
    reused = str(tmp_path / "reused" / "Format-Serving")
    run_fn(FnArgs(**{**trained["fn_args"], "serving_model_dir": reused,
                     "custom_config": {"config": CONFIG.to_dict(), "serving_dir": serving, "code": CODE}}))
    assert read_training_record(reused) == read_training_record(published)
    assert publish_atomically(reused, serving) == published  # the push that follows adds no version


def test_new_data_another_config_or_other_code_is_trained(trained, tmp_path):
    serving = str(tmp_path / "serving")
    publish_atomically(trained["serving_model_dir"], serving)
    config = CONFIG.to_dict()
    assert reusable_model(serving, training_key(DATA, config, CODE))
    new_span = {"span": 4, "input_fingerprint": DATA["input_fingerprint"]}
    changed_files = {**DATA, "input_fingerprint": DATA["input_fingerprint"].replace("1000", "1001")}
    for key in (training_key(new_span, config, CODE), training_key(changed_files, config, CODE),
                training_key(DATA, CONFIG.replace({"model.epochs": 7}).to_dict(), CODE),
                training_key(DATA, config, "other code")):
        assert key is not None and reusable_model(serving, key) is None
    # unknown data or code: never reused
    assert training_key({"span": 3, "input_fingerprint": None}, config, CODE) is None
    assert training_key(DATA, config, None) is None
    assert reusable_model(str(tmp_path / "empty"), training_key(DATA, config, CODE)) is None


def test_a_version_without_training_record_is_never_reused(trained, tmp_path):
    serving = tmp_path / "serving"
    (serving / "100").mkdir(parents=True)  # pushed by hand: a SavedModel, no terrafuse record
    assert reusable_model(str(serving), training_key(DATA, CONFIG.to_dict(), CODE)) is None


def _analyze(config, models, raw_eval_file, output_path):
    """The Evaluator's computation: eval_config(config) on raw examples; models = {name: dir}, baseline last."""
    has_baseline = len(models) > 1
    cfg = tfma.utils.update_eval_config_with_defaults(eval_config(config), has_baseline=has_baseline,
                                                      rubber_stamp=not has_baseline)
    shared = [tfma.default_eval_shared_model(eval_saved_model_path=path, eval_config=cfg,
                                             model_name=name if has_baseline else "")
              for name, path in models.items()]
    tfma.run_model_analysis(eval_shared_model=shared if has_baseline else shared[0], eval_config=cfg,
                            data_location=raw_eval_file, output_path=output_path)
    return _overall_metrics(output_path), tfma.load_validation_result(output_path)


def _overall_metrics(output_path):
    """{(model name, metric name, class id or None, is diff): value} for the overall slice."""
    (per_slice,) = [m for m in tfma.load_metrics(output_path) if not m.slice_key.single_slice_keys]
    return {(kv.key.model_name, kv.key.name, kv.key.sub_key.class_id.value if kv.key.sub_key.HasField("class_id")
             else None, kv.key.is_diff): kv.value.double_value.value for kv in per_slice.metric_keys_and_values
            if kv.value.HasField("double_value")}


def test_evaluator_config_reproduces_serving_recalls(trained, tmp_path):
    metrics, validation = _analyze(CONFIG, {"": trained["serving_model_dir"]}, trained["raw_eval_file"],
                                   str(tmp_path))
    out = _serve(trained["serving_model_dir"], trained["eval_rows"])
    expected = argmax_recalls(_label_indices(trained["eval_rows"]), out[PROBABILITIES], len(CONFIG.class_ids))
    measured = [metrics[("", "argmax_recall", k, False)] for k in range(len(CONFIG.class_ids))]
    np.testing.assert_allclose(measured, expected, atol=1e-6)
    assert metrics[("", "macro_argmax_recall", None, False)] == pytest.approx(expected.mean())
    assert metrics[("", "example_count", None, False)] == len(trained["eval_rows"])
    assert validation.validation_ok, validation
    summary = read_evaluation(str(tmp_path), CONFIG)
    assert list(summary.per_class_recall) == list(CONFIG.class_names)
    assert list(summary.per_class_recall.values()) == pytest.approx(measured)
    assert summary.blessed and summary.failures == [] and summary.macro_recall_change is None
    assert summary.example_count == len(trained["eval_rows"])


def test_macro_recall_drop_against_the_baseline_refuses(trained, tmp_path):
    """An untrained candidate against the trained baseline; every other check off, so only the macro change gates."""
    untrained = os.path.join(str(tmp_path), "untrained")
    export_serving_model(build_model(CONFIG), tft.TFTransformOutput(trained["transform_graph"]), CONFIG,
                         untrained, training_record={})
    config = CONFIG.replace({"gate.min_class_recall": 0.0, "gate.max_class_recall_drop": 1.0,
                             "gate.max_majority_excess": 1.0})
    output_path = os.path.join(str(tmp_path), "eval")
    metrics, validation = _analyze(config, {"candidate": untrained, "baseline": trained["serving_model_dir"]},
                                   trained["raw_eval_file"], output_path)
    drop = metrics[("candidate", "macro_argmax_recall", None, True)]
    assert drop < -config.gate.max_macro_recall_drop
    assert not validation.validation_ok
    failures = [f for s in validation.metric_validations_per_slice for f in s.failures]
    assert [(f.metric_key.name, f.metric_key.is_diff) for f in failures] == [("macro_argmax_recall", True)]
    # The untrained model's recalls are far from 0/1: TFMA and numpy agree on non-trivial numbers too.
    out = _serve(untrained, trained["eval_rows"])
    expected = argmax_recalls(_label_indices(trained["eval_rows"]), out[PROBABILITIES], len(CONFIG.class_ids))
    measured = [metrics[("candidate", "argmax_recall", k, False)] for k in range(len(CONFIG.class_ids))]
    np.testing.assert_allclose(measured, expected, atol=1e-6)
    summary = read_evaluation(output_path, config)
    assert summary.macro_recall_change == pytest.approx(drop)
    assert not summary.blessed and len(summary.failures) == 1 and "against the serving model" in summary.failures[0]
