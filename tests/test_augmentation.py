"""Augmentation moves pixels around the centre, the same way in every stream, and nothing else."""
import numpy as np
import tensorflow as tf

from foundation.config import Config
from models.augmentation import SYMMETRIES, random_symmetries, stream_dropout, symmetry
from models.fused_cnn import STREAMS_BY_MODE
from transforms.features import LABEL_INDEX, layout

P = 5


def _batch(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return {"ms": rng.normal(size=(n, P, P, 4)).astype(np.float32),
            "lidar": rng.normal(size=(n, P, P, 2)).astype(np.float32)}


def _variants(patch: np.ndarray) -> list[np.ndarray]:
    """The 8 symmetries of one patch [P, P, C], computed with numpy."""
    rotations = [np.rot90(patch, k, axes=(0, 1)) for k in range(4)]
    return rotations + [np.flip(r, axis=1) for r in rotations]


def test_the_eight_symmetries_are_the_squares_and_distinct():
    patches = _batch(n=1)["ms"]
    made = [symmetry(tf.constant(patches), i).numpy()[0] for i in range(SYMMETRIES)]
    for mine, expected in zip(made, _variants(patches[0])):
        np.testing.assert_array_equal(mine, expected)
    assert len({m.tobytes() for m in made}) == SYMMETRIES


def test_shapes_kept_centre_kept_and_every_stream_moved_alike():
    inputs = _batch()
    out = {name: t.numpy() for name, t in random_symmetries({k: tf.constant(v) for k, v in inputs.items()},
                                                               seed=1).items()}
    used = set()
    for name in inputs:
        assert out[name].shape == inputs[name].shape and out[name].dtype == inputs[name].dtype
        np.testing.assert_array_equal(out[name][:, P // 2, P // 2], inputs[name][:, P // 2, P // 2])
    for example in range(len(inputs["ms"])):
        (index,) = [i for i, v in enumerate(_variants(inputs["ms"][example])) if np.array_equal(v, out["ms"][example])]
        np.testing.assert_array_equal(out["lidar"][example], _variants(inputs["lidar"][example])[index])
        used.add(index)
    assert len(used) > 4, "the symmetry is drawn per example"


def test_the_trainers_dataset_leaves_labels_alone(tmp_path):
    """Through the Trainer's own input function: the same labels in the same order, the centre pixels unchanged."""
    from models import trainer

    config = Config()
    lay = layout(config)
    streams = STREAMS_BY_MODE["fused"]
    sizes = {s: int(np.prod(lay.stream_shape(s))) for s in streams}

    class TransformOutput:
        def transformed_feature_spec(self):
            return {**{s: tf.io.FixedLenFeature([n], tf.float32) for s, n in sizes.items()},
                    LABEL_INDEX: tf.io.FixedLenFeature([], tf.int64)}

    rng = np.random.default_rng(0)
    path = str(tmp_path / "transformed.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
        for i in range(300):
            feature = {s: tf.train.Feature(float_list=tf.train.FloatList(value=rng.normal(size=n))) for s, n in
                       sizes.items()}
            feature[LABEL_INDEX] = tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 6]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())

    def batches(augment, config=config):
        return list(trainer._dataset(path, TransformOutput(), config, streams, shuffle_buffer=0, augment=augment))

    centre = lay.patch_size // 2
    symmetries_only = config.replace({"model.stream_dropout": 0.0})
    for (plain, plain_labels), (moved, moved_labels), (dropped, dropped_labels) in zip(
            batches(False), batches(True, symmetries_only), batches(True)):
        np.testing.assert_array_equal(moved_labels.numpy(), plain_labels.numpy())
        np.testing.assert_array_equal(dropped_labels.numpy(), plain_labels.numpy())
        for s in streams:
            assert moved[s].shape == dropped[s].shape == plain[s].shape
            np.testing.assert_array_equal(moved[s][:, centre, centre].numpy(), plain[s][:, centre, centre].numpy())
        assert not np.array_equal(moved[streams[0]].numpy(), plain[streams[0]].numpy())
        lost = [np.all(dropped[s].numpy() == 0, axis=(1, 2, 3)) for s in streams]
        assert np.any(np.logical_or(*lost)), "the shipped config drops a stream of some training examples"
        assert not np.any(np.logical_and(*lost))


def test_stream_dropout_zeroes_one_whole_stream_of_about_its_share_of_examples():
    inputs = _batch(n=4000)
    out = {name: t.numpy() for name, t in stream_dropout({k: tf.constant(v) for k, v in inputs.items()},
                                                          rate=0.3, seed=3).items()}
    zeroed = {name: np.all(out[name] == 0, axis=(1, 2, 3)) for name in inputs}
    for name in inputs:
        assert out[name].shape == inputs[name].shape
        kept = ~zeroed[name]
        np.testing.assert_array_equal(out[name][kept], inputs[name][kept])
    assert not np.any(zeroed["ms"] & zeroed["lidar"]), "an example keeps at least one stream"
    assert abs(np.mean(zeroed["ms"] | zeroed["lidar"]) - 0.3) < 0.03
    assert abs(np.mean(zeroed["ms"]) - np.mean(zeroed["lidar"])) < 0.04, "either stream is dropped alike"
    unchanged = stream_dropout({k: tf.constant(v) for k, v in inputs.items()}, rate=0.0, seed=3)
    for name in inputs:
        np.testing.assert_array_equal(unchanged[name].numpy(), inputs[name])
