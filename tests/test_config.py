import pytest

from inspection.model.config import Config, ConfigError, load_config


def test_defaults_match_the_documented_default_yaml():
    from inspection.cli import DEFAULT_CONFIG

    assert load_config(DEFAULT_CONFIG) == Config()


@pytest.mark.parametrize("name", ["default", "demo", "kolektorsdd", "small-defects"])
def test_each_training_config_shipped_loads(name):
    """A key misspelt or out of range in a shipped config fails here, not in a user's first training run."""
    from inspection.cli import DEFAULT_CONFIG

    load_config(DEFAULT_CONFIG.parent / f"{name}.yaml")


def test_the_config_docs_state_the_box_rules_own_defaults():
    import re
    from pathlib import Path

    from inspection.core.boxes import LEVELS, BoxRule

    text = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    default = BoxRule()
    for name, level in LEVELS.items():
        row = re.search(rf"^\| `eval\.boxes\.{name}` \|(.*)$", text, re.M)
        assert row, f"docs/configuration.md has no row for eval.boxes.{name}"
        if level.calibrated:
            assert row.group(1).split("|")[0].strip() == f"{getattr(default, name):g}"
        else:
            assert f"null = {getattr(default, name):g} " in row.group(1), name


def test_unknown_key_names_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "train.epoch: unknown key" in str(err.value)


def test_wrong_type_and_range_name_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: fast\ndata:\n  image_size: [100, 100]\n")
    msg = str(pytest.raises(ConfigError, load_config, path).value)
    assert "train.lr" in msg and "'fast'" in msg
    assert "data.image_size" in msg and "multiples of 32" in msg


def test_overrides_and_bad_yaml(tmp_path):
    cfg = load_config(None, ["train.epochs=3", "model.backbone=tiny", "data.roi=[1, 2, 30, 40]"])
    assert cfg.train.epochs == 3 and cfg.model.backbone == "tiny" and cfg.data.roi == (1, 2, 30, 40)
    with pytest.raises(ConfigError, match="model.backbone"):
        load_config(None, ["model.backbone=vgg"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match="split"):
        load_config(None, ["data.split={train: 0.5, val: 0.2, test: 0.2}"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not plain YAML"):  # a YAML tag in an override: a message, no traceback
        load_config(None, ["train.epochs=!!python/object:os.system x"])
    from inspection.deploy.line.station import StationConfigError, load_station
    with pytest.raises(StationConfigError, match="not plain YAML"):
        load_station(None, ["station=!!python/name:os.system"])
