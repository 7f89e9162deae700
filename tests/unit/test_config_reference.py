"""docs/configuration.md is generated from the config models and must stay in step with them."""

import re

from recsys.cli import main
from recsys.config import ExperimentConfig, flatten
from recsys.config_reference import DOC_PATH, REGENERATE, render_reference
from recsys.embeddings import available_methods, get_method


def _committed() -> str:
    assert DOC_PATH.exists(), f"{DOC_PATH} is missing; generate it with `{REGENERATE}`"
    return DOC_PATH.read_text(encoding="utf-8")


def test_committed_reference_is_current():
    assert _committed() == render_reference(), (
        f"{DOC_PATH} is stale (the config models or method options changed); regenerate it with `{REGENERATE}` and commit it"
    )


def test_every_config_key_has_a_row():
    doc = _committed()
    keys = list(flatten(ExperimentConfig()))  # defaults, flattened independently of the generator
    assert "training.sparse_lr" in keys and "embedding.options" in keys
    missing = [k for k in keys if f"| `{k}` |" not in doc]
    assert not missing, f"keys without a row in {DOC_PATH}: {missing}"


def test_every_registered_method_has_a_section_with_its_options():
    doc = _committed()
    sections = dict(re.findall(r"^### `([^`]+)`\n(.*?)(?=^##|\Z)", doc, flags=re.MULTILINE | re.DOTALL))
    for name in available_methods():
        assert name in sections, f"method '{name}' has no section in {DOC_PATH}"
        for key in get_method(name).Options.model_fields:
            assert f"| `embedding.options.{key}` |" in sections[name], f"option {name}.{key} missing from its section"
    assert set(sections) == set(available_methods())


def test_cli_prints_or_writes_the_reference(tmp_path, capsys):
    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out == render_reference()
    out = tmp_path / "ref.md"
    assert main(["config-reference", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render_reference()
