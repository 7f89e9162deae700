"""``recsys train`` config errors: one line naming where the bad value was set (the ``--set``
argument, the included file), reported before any run folder or MLflow run exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.cli import main
from recsys.config import ConfigError, load_config, load_experiment

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "configs/quickstart.yaml")


def train_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The one-line error of a ``recsys train`` that must stop before training."""
    assert main(["train", "--config", *args, "--out", "run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert not Path("run").exists() and not Path("mlflow.db").exists() and not Path("mlruns").exists()
    return err.removeprefix("error: ")


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_yaml_syntax_error_in_a_set_value_names_the_argument(capsys):
    err = train_error(capsys, QUICKSTART, "--set", "embedding.options={a: 1: 2}")
    assert err.startswith("--set embedding.options={a: 1: 2}: invalid YAML value: ") and "column 6" in err


@pytest.mark.parametrize(
    ("assignment", "text"),
    [
        ("training.epochs=abc", "training.epochs: Input should be a valid integer"),
        ("model.name=resnet", "model.name: Input should be 'dlrm', 'dcnv2' or 'deepfm'"),
        ("embedding.method=nope", "embedding.method: unknown method 'nope'; available: "),
        ("embedding.options={nope: 3}", "embedding.options: invalid options for method 'full': nope: Extra inputs are not permitted"),
        ("tracking.bogus=1", "tracking.bogus: Extra inputs are not permitted"),
    ],
)
def test_bad_set_value_is_reported_against_the_argument_not_the_file(capsys, assignment, text):
    err = train_error(capsys, QUICKSTART, "--set", "training.epochs=2", "--set", assignment)
    assert err.startswith(f"--set {assignment}: {text}"), err
    assert "quickstart.yaml" not in err


def test_bad_key_in_an_included_file_names_that_file(tmp_path, capsys):
    (tmp_path / "model.yaml").write_text("name: dlrm\nembedding_dimm: 8\n")
    (tmp_path / "exp.yaml").write_text("model: model.yaml\ntraining: {epochs: 1}\n")
    err = train_error(capsys, str(tmp_path / "exp.yaml"))
    assert err == f"{tmp_path / 'model.yaml'}: model.embedding_dimm: Extra inputs are not permitted"
    (tmp_path / "exp.yaml").write_text("model: model.yaml\ntraining: {epochz: 1}\n")
    (tmp_path / "model.yaml").write_text("name: dlrm\n")
    assert train_error(capsys, str(tmp_path / "exp.yaml")) == f"{tmp_path / 'exp.yaml'}: training.epochz: Extra inputs are not permitted"


def test_yaml_error_in_a_file_is_one_line_with_its_position(tmp_path, capsys):
    (tmp_path / "exp.yaml").write_text("training:\n  epochs: [1\n")
    err = train_error(capsys, str(tmp_path / "exp.yaml"))
    assert err.startswith(f"{tmp_path / 'exp.yaml'}: invalid YAML: ") and "line 3" in err


def test_missing_data_path_fails_before_a_run_or_folder_exists(tmp_path, capsys):
    err = train_error(capsys, QUICKSTART, "--set", f"data.path={tmp_path / 'nowhere'}")
    assert err == (
        f"--set data.path={tmp_path / 'nowhere'}: data.path: {tmp_path / 'nowhere'}: "
        "no dataset.json here; convert data with `recsys data convert` or `recsys data synth`"
    )
    err = train_error(capsys, QUICKSTART)  # data/quickstart, relative to this empty working directory
    assert err.startswith(f"{QUICKSTART}: data.path: data/quickstart: no dataset.json here")


def test_train_experiment_checks_the_dataset_before_creating_the_run_folder(tmp_path):
    from recsys.training.run import train_experiment

    cfg = load_config(QUICKSTART, [f"data.path={tmp_path / 'nowhere'}"])
    with pytest.raises(FileNotFoundError, match="no dataset.json"):
        train_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlflow.db").exists()


def test_sources_of_keys_and_of_section_wide_checks():
    loaded = load_experiment(QUICKSTART, ["data.path=/x", "model={name: dcnv2}"])
    assert loaded.source_of("data.path") == "--set data.path=/x"
    assert loaded.source_of("model.name") == "--set model={name: dcnv2}"  # replaced the included model file
    assert loaded.source_of("training.epochs") == str(ROOT / "configs/training/default.yaml")
    assert loaded.source_of("embedding.method") == QUICKSTART
    with pytest.raises(ConfigError) as err:
        load_config(None, ["embedding.compression=2", "embedding.budget_bytes=100"])
    assert str(err.value) == (
        "--set embedding.compression=2, --set embedding.budget_bytes=100: embedding: set either compression or budget_bytes, not both"
    )
