"""The Feast plugin with the real parts: `recsys feast init` → `feast apply` → `get_online_features`
equal to the lookup layer (known and unseen values), `feast serve` over HTTP, Feast's sqlite and a
real Redis server filled by `recsys feast materialize` giving the same vectors, bad input refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from recsys.cli import main as recsys_main
from recsys.export import export_run, load_artifact
from recsys.serving.feast_materialize import ValuesFileError, materialize
from recsys.serving.feast_store import FeastViewError
from recsys.serving.store import Store
from tests.feast_support import (
    apply_in_process,
    env,
    feast_cli,
    free_port,
    known_values,
    online_vectors,
    redis_server,
    repo_objects,
    start_feast_serve,
    stop_feast_serve,
    wait_feast_serve,
)
from tests.serving_support import ensure_runs, raw_strings


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    data, runs = ensure_runs(tmp_path_factory.getbasetemp() / "serving-runs")
    root = tmp_path_factory.mktemp("feast-art")
    hashed, full = root / "hash-fp32", root / "full-int8"
    export_run(runs["hash"], hashed, dtype="fp32")
    export_run(runs["full"], full, dtype="int8")
    corrupt = root / "corrupt"
    shutil.copytree(hashed, corrupt)
    raw = bytearray((corrupt / "dense.safetensors").read_bytes())
    raw[-3] ^= 0x55
    (corrupt / "dense.safetensors").write_bytes(bytes(raw))
    stores = {p.name: Store(load_artifact(p)) for p in (hashed, full)}
    return {"hash": hashed, "full": full, "corrupt": corrupt, "stores": stores, "raw": raw_strings(data), "root": root}


@pytest.fixture(scope="module")
def redis():
    yield from redis_server()


def _init(artifact: Path, out: Path, *extra: str) -> Path:
    assert recsys_main(["feast", "init", "--artifact", str(artifact), "--out", str(out), *extra]) == 0
    return out


def _pairs(arts, name: str, n: int = 100) -> tuple[list, list]:
    store = arts["stores"][name]
    known = known_values(store, arts["raw"], n)
    unseen = [(store.features[i % len(store.features)], f"never-seen-{i}") for i in range(n)]
    return known, unseen


def _assert_vectors(store: Store, got: dict, pairs: list) -> None:
    expected = store.embeddings(pairs)
    for pair, want in zip(pairs, expected):
        assert got[pair] is not None, pair
        np.testing.assert_array_equal(got[pair], want[: store.widths[pair[0]]], err_msg=str(pair))


def test_feast_apply_and_online_features_equal_the_lookup_layer(arts, tmp_path):
    repo = _init(arts["hash"], tmp_path / "repo")
    done = feast_cli(repo, "apply")
    assert done.returncode == 0, done.stdout + done.stderr
    from feast import FeatureStore

    fs, store = FeatureStore(repo_path=str(repo)), arts["stores"]["hash-fp32"]
    assert sorted(v.name for v in fs.list_feature_views()) == sorted(store.features)
    known, unseen = _pairs(arts, "hash-fp32")
    _assert_vectors(store, online_vectors(fs, known + unseen), known + unseen)  # unseen: hashed like /v1/embeddings
    both = fs.get_online_features(
        features=["C1:C1_embedding", "C2:C2_embedding"], entity_rows=[{"C1": "C1_3", "C2": "zz"}, {"C1": 7, "C2": "C2_1"}]
    ).to_dict()
    want = store.embeddings([("C1", "C1_3"), ("C1", "7"), ("C2", "zz"), ("C2", "C2_1")])
    np.testing.assert_array_equal(np.array(both["C1_embedding"] + both["C2_embedding"], np.float32), want)

    port = free_port()  # feast serve: POST /get-online-features answers the same vectors
    proc = start_feast_serve(repo, port)
    try:
        url, sample = f"http://127.0.0.1:{port}", known[:20] + unseen[:20]
        wait_feast_serve(url, proc)
        for field in sorted({f for f, _ in sample}):
            values = [v for f, v in sample if f == field]
            r = httpx.post(url + "/get-online-features", json={"features": [f"{field}:{field}_embedding"], "entities": {field: values}}, timeout=30)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["metadata"]["feature_names"] == [field, f"{field}_embedding"]
            result = body["results"][1]
            assert set(result["statuses"]) == {"PRESENT"}
            np.testing.assert_array_equal(np.array(result["values"], np.float32), store.embeddings([(field, v) for v in values]))
    finally:
        stop_feast_serve(proc)


@pytest.fixture(scope="module")
def stores_filled(arts, redis, tmp_path_factory):
    """The full-int8 artifact behind three repos: ours, Feast's sqlite and Redis (materialized)."""
    base = tmp_path_factory.mktemp("feast-repos")
    ours = apply_in_process(_init(arts["full"], base / "ours"))
    known, unseen = _pairs(arts, "full-int8")
    values = base / "values.csv"
    values.write_text("feature,value\n" + "".join(f"{f},{v}\n" for f, v in known + unseen[:10]))
    out = {"ours": ours}
    for kind, extra in (("sqlite", []), ("redis", ["--redis", redis.connection])):
        repo = _init(arts["full"], base / kind, "--online-store", kind, *extra)
        out[kind] = apply_in_process(repo)
        if kind == "sqlite":  # the command line
            assert (
                recsys_main(
                    [
                        "feast",
                        "materialize",
                        "--artifact",
                        str(arts["full"]),
                        "--repo",
                        str(repo),
                        "--values",
                        str(values),
                        "--batch-size",
                        "37",
                        "--no-progress",
                    ]
                )
                == 0
            )
        else:
            report = materialize(arts["stores"]["full-int8"], repo, values, batch_size=37, progress=False)
            assert report.total == len(known) and sum(report.skipped_oov.values()) == 10  # OOV values are not written
    return out, known, unseen


@pytest.mark.parametrize("kind", ["ours", "sqlite", "redis"])
def test_stores_answer_the_same_vectors(stores_filled, arts, kind, redis):
    stores, known, unseen = stores_filled
    store = arts["stores"]["full-int8"]
    got = online_vectors(stores[kind], known + unseen[:10])
    _assert_vectors(store, got, known)
    if kind == "ours":  # never materialized: the vocabulary method's OOV row
        _assert_vectors(store, got, unseen[:10])
        oov = store.embeddings([unseen[0]])[0]
        assert all(np.array_equal(got[p], store.embeddings([p])[0]) for p in unseen[:10]) and oov.any()
    else:
        assert all(got[p] is None for p in unseen[:10])
    if kind == "redis":
        assert redis.client.dbsize() > 0


def test_bad_views_and_artifacts_are_refused(arts, tmp_path):
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Array, Float32

    repo = _init(arts["hash"], tmp_path / "repo")
    assert recsys_main(["feast", "init", "--artifact", str(arts["hash"]), "--out", str(repo)]) == 2  # exists: not replaced
    fs = FeatureStore(repo_path=str(repo))
    src = FileSource(name="s", path=str(repo / "data/sources/field_0.parquet"), timestamp_field="event_timestamp")

    def view(name: str, key: str, dim: int) -> list:
        entity = Entity(name=key, join_keys=[key], value_type=ValueType.STRING)
        return [
            entity,
            src,
            FeatureView(name=name, entities=[entity], source=src, schema=[Field(name=f"{key}_embedding", dtype=Array(Float32), vector_length=dim)]),
        ]

    with pytest.raises(FeastViewError, match=r"feature view 'users': field 'user_id' is not a sparse field of the artifact"):
        fs.apply(view("users", "user_id", 16))
    with pytest.raises(
        FeastViewError, match=r"feature view 'c1': feature 'C1_embedding' of field 'C1' has vector_length 8, the artifact's dimension is 16"
    ):
        fs.apply(view("c1", "C1", 8))
    assert FeatureStore(repo_path=str(repo)).list_feature_views() == []  # nothing registered

    fs.apply(repo_objects(repo))
    with pytest.raises(NotImplementedError, match="RecsysOnlineStore serves feature view 'C1' .* stores no rows: 1 written rows refused"):
        fs.write_to_online_store(
            "C1",
            __import__("pandas").DataFrame(
                {"C1": ["a"], "C1_embedding": [np.zeros(16, np.float32)], "event_timestamp": [__import__("pandas").Timestamp.now(tz="UTC")]}
            ),
        )

    broken = tmp_path / "broken"  # an artifact failing its checksums: refused at init, apply and read
    assert recsys_main(["feast", "init", "--artifact", str(arts["corrupt"]), "--out", str(broken)]) == 2
    assert not broken.exists()
    shutil.copytree(repo, broken)
    cfg = broken / "feature_store.yaml"
    cfg.write_text(cfg.read_text().replace(str(arts["hash"]), str(arts["corrupt"])))
    done = feast_cli(broken, "apply")
    assert done.returncode != 0 and "checksum" in (done.stdout + done.stderr).lower(), done.stdout + done.stderr
    fs = FeatureStore(repo_path=str(broken))
    with pytest.raises(Exception, match="(?i)checksum"):
        fs.get_online_features(features=["C1:C1_embedding"], entity_rows=[{"C1": "C1_1"}])


def test_hot_reload_and_bad_reload(arts, tmp_path):
    link = tmp_path / "current"
    link.symlink_to(arts["hash"])
    repo = _init(link, tmp_path / "repo", "--poll-interval", "0.1")
    assert f"artifact: {link}" in (repo / "feature_store.yaml").read_text()  # the link, not its target
    fs = apply_in_process(repo)
    pair = ("C1", "C1_2")
    before = online_vectors(fs, [pair])[pair]
    np.testing.assert_array_equal(before, arts["stores"]["hash-fp32"].embeddings([pair])[0])

    def repoint(target: Path) -> None:
        tmp = tmp_path / "current.new"
        tmp.symlink_to(target)
        os.replace(tmp, link)

    repoint(arts["corrupt"])  # refused: the old vectors stay
    time.sleep(1.0)
    np.testing.assert_array_equal(online_vectors(fs, [pair])[pair], before)
    repoint(arts["full"])
    want = arts["stores"]["full-int8"].embeddings([pair])[0]
    deadline = time.time() + 30
    while not np.array_equal(online_vectors(fs, [pair])[pair], want):
        assert time.time() < deadline, "the new artifact was not picked up"
        time.sleep(0.1)
    polling = sum(t.name == "model-reload" for t in threading.enumerate())
    fs.teardown()  # `feast teardown`: the store stops polling and lets the artifact go
    assert sum(t.name == "model-reload" for t in threading.enumerate()) == polling - 1


def test_materialize_checks_the_values_file_first(arts, tmp_path, redis):
    repo = _init(arts["full"], tmp_path / "sq", "--online-store", "sqlite")
    fs = apply_in_process(repo)
    store = arts["stores"]["full-int8"]
    bad = tmp_path / "bad.csv"
    bad.write_text("feature,value\nC1,C1_1\nC1,C1_2\nnope,x\n")
    with pytest.raises(ValuesFileError, match=r"bad.csv: row 3: feature 'nope' has no feature view in the repo"):
        materialize(store, repo, bad, progress=False)
    assert online_vectors(fs, [("C1", "C1_1")])[("C1", "C1_1")] is None  # nothing written
    bad.write_text("feat,value\nC1,C1_1\n")
    with pytest.raises(ValuesFileError, match=r"missing column\(s\) \['feature'\]"):
        materialize(store, repo, bad, progress=False)
    ours = _init(arts["full"], tmp_path / "ours")
    with pytest.raises(ValueError, match="online store is RecsysOnlineStore itself"):
        materialize(store, ours, bad, progress=False)


def test_the_store_imports_no_training_code_and_freezes_the_gc_once_loaded(arts, tmp_path):
    repo = apply_in_process(_init(arts["hash"], tmp_path / "repo")).repo_path
    code = (
        "import sys; from feast import FeatureStore; fs = FeatureStore(repo_path=sys.argv[1]); "
        "fs.get_online_features(features=['C1:C1_embedding'], entity_rows=[{'C1': 'a'}]); "
        "import gc; print(gc.get_freeze_count() > 0); "  # gc_freeze: the objects alive after the first load are frozen
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tests', 'bench') or m.startswith('recsys.training')))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(repo)], env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-2:] == ["True", "[]"]


def test_registered_model_alias_is_served_and_followed(arts, tmp_path, monkeypatch):
    import mlflow

    from recsys.serving.pyfunc import log_model

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    try:
        log_model(arts["hash"], "model", registered_model_name="ctr")
        client = mlflow.MlflowClient()
        client.set_registered_model_alias("ctr", "champion", "1")
        repo = _init("models:/ctr@champion", tmp_path / "repo", "--tracking-uri", uri, "--poll-interval", "0.2")
        fs = apply_in_process(repo)
        pair = ("C2", "C2_5")
        np.testing.assert_array_equal(online_vectors(fs, [pair])[pair], arts["stores"]["hash-fp32"].embeddings([pair])[0])
        log_model(arts["full"], "model", registered_model_name="ctr")
        client.set_registered_model_alias("ctr", "champion", "2")
    finally:
        mlflow.set_tracking_uri(None)
    want, deadline = arts["stores"]["full-int8"].embeddings([pair])[0], time.time() + 60
    while not np.array_equal(online_vectors(fs, [pair])[pair], want):
        assert time.time() < deadline, "the alias move was not followed"
        time.sleep(0.2)
