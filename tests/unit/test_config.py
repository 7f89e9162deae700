from pathlib import Path

import pytest

from recsys.config import ConfigError, flatten, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_config_loads_with_includes_and_overrides():
    cfg = load_config(ROOT / "configs/quickstart.yaml", ["training.epochs=5", "embedding.method=hash", "embedding.compression=10"])
    assert cfg.model.name == "dlrm"
    assert cfg.training.epochs == 5
    assert cfg.embedding.method == "hash"
    assert cfg.embedding.compression == 10
    flat = flatten(cfg)
    assert flat["training.epochs"] == 5 and flat["model.name"] == "dlrm"


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("training:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "training.epochz" in str(err.value)


def test_bad_type_and_bad_model_name(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model:\n  name: resnet\ntraining:\n  batch_size: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "model.name" in text and "training.batch_size" in text


def test_unknown_method_lists_available(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'nope'; available: .*full"):
        load_config(None, ["embedding.method=nope"])


def test_missing_include_and_bad_override(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("model: model/missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(path)
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(None, ["training.epochs"])


def test_both_budgets_rejected():
    with pytest.raises(ConfigError, match="compression or budget_bytes"):
        load_config(None, ["embedding.method=full", "embedding.compression=2", "embedding.budget_bytes=100"])
