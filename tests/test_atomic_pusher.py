"""A push is all or nothing and never touches earlier versions."""
import os
import shutil

import pytest

from components import atomic_pusher
from components.atomic_pusher import publish_atomically
from foundation.published import latest_published, model_versions


def _model(tmp_path):
    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"graph")
    (model / "variables" / "variables.data-00000-of-00001").write_bytes(b"x" * 1000)
    return model


def test_publishes_a_complete_version_and_keeps_earlier_ones(tmp_path):
    model, serving = _model(tmp_path), tmp_path / "serving"
    other = tmp_path / "other"
    shutil.copytree(model, other)
    first = publish_atomically(str(model), str(serving), version=100)
    second = publish_atomically(str(other), str(serving), version=100)  # same second: next number
    assert model_versions(str(serving)) == ["100", "101"]
    assert os.path.basename(second) == "101"
    assert (serving / "100" / "saved_model.pb").read_bytes() == b"graph"
    assert sorted(os.listdir(serving)) == ["100", "101"], "no staging folder left behind"
    assert first != second


def test_a_copy_that_fails_midway_leaves_no_version(tmp_path, monkeypatch):
    model, serving = _model(tmp_path), tmp_path / "serving"
    publish_atomically(str(model), str(serving), version=100)

    def copy_then_crash(src, dst, *args, **kwargs):
        os.makedirs(dst)
        shutil.copy(os.path.join(src, "saved_model.pb"), dst)
        raise OSError("disk full")

    retrained = tmp_path / "retrained"
    shutil.copytree(model, retrained)
    monkeypatch.setattr(atomic_pusher.io_utils, "copy_dir", copy_then_crash)
    with pytest.raises(OSError, match="disk full"):
        publish_atomically(str(retrained), str(serving), version=200)
    assert sorted(os.listdir(serving)) == ["100"]
    assert (serving / "100" / "variables" / "variables.data-00000-of-00001").stat().st_size == 1000


def test_a_model_already_published_is_not_published_again(tmp_path):
    model, serving = _model(tmp_path), tmp_path / "serving"
    first = publish_atomically(str(model), str(serving), version=100)
    assert publish_atomically(str(model), str(serving), version=200) == first
    assert model_versions(str(serving)) == ["100"]


def test_a_copy_of_a_published_version_is_that_version(tmp_path):
    """The Trainer reuses the serving model when no new data came: pushing that copy adds no version."""
    model, serving = _model(tmp_path), tmp_path / "serving"
    first = publish_atomically(str(model), str(serving), version=100)
    reused = tmp_path / "reused"
    shutil.copytree(first, reused)
    assert publish_atomically(str(reused), str(serving), version=200) == first
    assert model_versions(str(serving)) == ["100"]
    assert latest_published(str(serving)) == first


def test_a_superseded_model_blessed_again_is_published_again(tmp_path):
    model, serving = _model(tmp_path), tmp_path / "serving"
    other = tmp_path / "other"
    shutil.copytree(model, other)
    publish_atomically(str(model), str(serving), version=100)
    publish_atomically(str(other), str(serving), version=200)
    again = publish_atomically(str(model), str(serving), version=300)
    assert model_versions(str(serving)) == ["100", "200", "300"]
    assert latest_published(str(serving)) == again
