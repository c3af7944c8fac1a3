"""The typed config: defaults, file and CLI overrides, and clear errors for bad values."""
import pytest

from foundation.config import Config, ConfigError, load_config


def test_round_trips_through_dict():
    config = Config()
    assert Config.from_dict(config.to_dict()) == config


def test_file_then_cli_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  epochs: 3\n  class_weights: inverse\nstreams:\n  lidar_channels: [height, intensity, return_ratio]\n")
    config = load_config(str(path), ["model.epochs=5", "gate.min_class_recall=0.7"])
    assert config.model.epochs == 5
    assert config.model.class_weights == "inverse"
    assert config.streams.lidar_channels == ("height", "intensity", "return_ratio")
    assert config.gate.min_class_recall == 0.7


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.epochs=three", "model.epochs must be an integer"),
        ("model.class_weights=balanced", "model.class_weights must be one of"),
        ("ingest.patch_size=8", "patch_size must be odd"),
        ("ingest.split_pattern=span-{SPAN}/*/*", "span width"),
        ("streams.lidar_channels=[intensity]", "include 'height'"),
        ("model.nonsense=1", "unknown config key 'model.nonsense'"),
        ("classes=[{id: 1, name: a}, {id: 1, name: b}]", "distinct positive ids"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("(", r"\(")):
        load_config(None, [override])


def test_bad_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("modle:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config section 'modle'"):
        load_config(str(path))


def test_class_indices_follow_the_table_not_the_id_order():
    config = Config().replace({"classes": [{"id": 7, "name": "a"}, {"id": 2, "name": "b"}, {"id": 5, "name": "c"}]})
    assert config.class_indices([2, 7, 5, 99, 7]) == [1, 0, 2, -1, 0]
