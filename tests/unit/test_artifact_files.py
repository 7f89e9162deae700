"""Crafted artifacts: every file the loader reads is confined to the folder, a regular file, listed
with a checksum, read without blocking; errors name the file; optional manifest signing."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from recsys.export import ArtifactError, export_run, load_artifact, read_manifest
from recsys.export.artifact import Manifest, write_manifest
from recsys.export.signing import KEY_ENV
from recsys.serving.source import LocalSource
from recsys.serving.store import Store
from tests.serving_support import ensure_runs

VOCAB = "vocab/C1.arrow"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """A ``full`` fp32 artifact (index method: it reads vocabularies)."""
    _, runs = ensure_runs(tmp_path_factory.getbasetemp() / "serving-runs")
    out = tmp_path_factory.mktemp("artifact") / "full-fp32"
    export_run(runs["full"], out, dtype="fp32")
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _reseal(folder: Path, names: list[str] | None = None, metrics: dict | None = None, **dataset_vocab: str) -> None:
    """Rewrite the manifest as an attacker could (valid checksums of ``names``, default: as listed),
    vocabulary paths changed by ``dataset_vocab`` (field -> path), ``metrics`` replaced."""
    manifest = Manifest.model_validate_json((folder / "manifest.json").read_bytes())
    vocab = {**manifest.dataset.vocabularies, **dataset_vocab}
    update = {"dataset": manifest.dataset.model_copy(update={"vocabularies": vocab}), "metrics": metrics or manifest.metrics}
    write_manifest(folder, manifest.model_copy(update=update), list(manifest.files) if names is None else names)


def _load_within(folder: Path, seconds: float = 20.0) -> BaseException | None:
    """What ``Store(load_artifact(folder))`` raised (``None``: it loaded); fails if it blocks."""
    outcome: list[BaseException | None] = []

    def work() -> None:
        try:
            Store(load_artifact(folder))
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"loading {folder} blocked for over {seconds} s"
    return outcome[0]


def test_exported_artifacts_list_every_file_they_read(artifact):
    manifest = read_manifest(artifact)
    assert set(manifest.files) == {"embedding.safetensors", "dense.safetensors", *manifest.dataset.vocabularies.values()}
    assert manifest.signature is None and "signature" not in json.loads((artifact / "manifest.json").read_text())
    assert _load_within(artifact) is None


def test_empty_files_list_does_not_turn_checksums_off(artifact, tmp_path):
    bad = _copy(artifact, tmp_path / "unlisted")
    raw = bytearray((bad / "embedding.safetensors").read_bytes())
    raw[-5] ^= 0xFF  # a corrupted table ...
    (bad / "embedding.safetensors").write_bytes(bytes(raw))
    _reseal(bad, names=[])  # ... and a manifest with "files": {}
    assert json.loads((bad / "manifest.json").read_text())["files"] == {}
    err = _load_within(bad)
    assert isinstance(err, ArtifactError) and "not listed in the manifest's files" in str(err)
    assert str(bad / "embedding.safetensors") in str(err)


def test_a_vocabulary_outside_the_folder_is_refused(artifact, tmp_path):
    outside = tmp_path / "outside.arrow"
    shutil.copy(artifact / VOCAB, outside)
    absolute = _copy(artifact, tmp_path / "absolute")
    _reseal(absolute, [*read_manifest(artifact).files, str(outside)], C1=str(outside))  # listed, with its true checksum
    err = _load_within(absolute)
    assert isinstance(err, ArtifactError) and "absolute path" in str(err) and str(outside) in str(err)

    linked = _copy(artifact, tmp_path / "linked")
    (linked / VOCAB).unlink()
    (linked / VOCAB).symlink_to(outside)  # same bytes, so the checksum matches
    err = _load_within(linked)
    assert isinstance(err, ArtifactError) and "outside the artifact folder" in str(err) and VOCAB in str(err)

    dotdot = _copy(artifact, tmp_path / "dotdot")
    _reseal(dotdot, [*read_manifest(artifact).files, "../outside.arrow"], C1="../outside.arrow")
    err = _load_within(dotdot)
    assert isinstance(err, ArtifactError) and "outside the artifact folder" in str(err) and "../outside.arrow" in str(err)


def test_a_symlink_inside_the_folder_is_followed(artifact, tmp_path):
    ok = _copy(artifact, tmp_path / "inner-link")
    os.replace(ok / VOCAB, ok / "vocab" / "real-C1.arrow")
    (ok / VOCAB).symlink_to("real-C1.arrow")
    assert _load_within(ok) is None


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "etc-passwd", "folder"])
@pytest.mark.parametrize("listed", [True, False])
def test_special_files_are_refused_without_blocking(artifact, tmp_path, kind, listed):
    """A vocabulary that is a FIFO, a device, a file elsewhere or a folder: listed with the old
    checksum, or left out of the manifest's files: refused at once, naming the file."""
    bad = _copy(artifact, tmp_path / kind)
    if not listed:
        _reseal(bad, names=[n for n in read_manifest(artifact).files if n != VOCAB])
    target = bad / VOCAB
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    else:
        target.symlink_to("/dev/zero" if kind == "dev-zero" else "/etc/passwd")
    err = _load_within(bad)
    assert isinstance(err, ArtifactError), err
    assert str(target) in str(err)
    expected = "not listed" if not listed else {"fifo": "is a FIFO", "folder": "is a folder"}.get(kind, "outside the artifact folder")
    assert expected in str(err), str(err)


def test_a_fifo_manifest_does_not_block_the_poll(artifact, tmp_path):
    bad = _copy(artifact, tmp_path / "fifo-manifest")
    (bad / "manifest.json").unlink()
    os.mkfifo(bad / "manifest.json")
    result: list[BaseException] = []
    t = threading.Thread(target=lambda: result.append(pytest.raises(ArtifactError, LocalSource(bad).current).value), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive() and "is a FIFO" in str(result[0]) and "manifest.json" in str(result[0])


def test_a_broken_vocabulary_error_names_the_file(artifact, tmp_path):
    bad = _copy(artifact, tmp_path / "garbage")
    (bad / VOCAB).write_bytes(b"not arrow at all")
    _reseal(bad, list(read_manifest(artifact).files))  # checksums match the garbage
    err = _load_within(bad)
    assert isinstance(err, ArtifactError) and str(bad / VOCAB) in str(err) and "not a vocabulary" in str(err)


def test_signed_manifests(artifact, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k1")
    signed = _copy(artifact, tmp_path / "signed")
    _reseal(signed)  # signed with k1
    manifest = read_manifest(signed)
    assert manifest.signature and manifest.signature.startswith("hmac-sha256:")
    monkeypatch.delenv(KEY_ENV)
    expected = Store(load_artifact(artifact)).embeddings([("C1", "C1_3")])
    monkeypatch.setenv(KEY_ENV, "k1")
    np.testing.assert_array_equal(Store(load_artifact(signed)).embeddings([("C1", "C1_3")]), expected)

    with pytest.raises(ArtifactError, match="not signed") as err:
        load_artifact(artifact)  # unsigned, while a key is set
    assert str(artifact / "manifest.json") in str(err.value)
    monkeypatch.setenv(KEY_ENV, "k2")
    with pytest.raises(ArtifactError, match="signature does not match"):
        read_manifest(signed)

    edited = _copy(signed, tmp_path / "edited")  # an edit with the checksum recomputed, the old signature kept
    monkeypatch.delenv(KEY_ENV)
    _reseal(edited, metrics={**manifest.metrics, "test_auc": 0.99})
    data = json.loads((edited / "manifest.json").read_text())
    (edited / "manifest.json").write_text(json.dumps({**data, "signature": manifest.signature}))
    assert read_manifest(edited).metrics["test_auc"] == 0.99  # without a key nothing is checked (documented)
    monkeypatch.setenv(KEY_ENV, "k1")
    with pytest.raises(ArtifactError, match="signature does not match") as err:
        load_artifact(edited)
    assert str(edited / "manifest.json") in str(err.value)
