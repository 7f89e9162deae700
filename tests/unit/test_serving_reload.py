"""Hot reload of crafted artifacts: bounded loads, failures visible in the holder status and metrics,
interface changes refused unless allowed, every load logged with its version."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from recsys.export import export_run
from recsys.serving.metrics import ServingMetrics
from recsys.serving.reload import ModelHolder
from recsys.serving.source import LocalSource, SourceRef
from tests.serving_support import ROOT, ensure_runs


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    _, runs = ensure_runs(tmp_path_factory.getbasetemp() / "serving-runs")
    out = tmp_path_factory.mktemp("reload-artifacts")
    made = {"hash": ("hash", "fp32"), "full-int8": ("full", "int8"), "dim8": ("hash-dim8", "fp32")}
    for name, (run, dtype) in made.items():
        export_run(runs[run], out / name, dtype=dtype)
    return {name: out / name for name in made}


def _point(link: Path, target: Path) -> None:
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _poll_within(holder: ModelHolder, seconds: float = 30.0) -> bool:
    """``holder.poll_once()``, failing the test if it blocks."""
    out: list[bool] = []
    t = threading.Thread(target=lambda: out.append(holder.poll_once()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"poll_once blocked for over {seconds} s"
    return out[0]


def _holder(link: Path, **kw) -> tuple[ModelHolder, ServingMetrics]:
    holder = ModelHolder(LocalSource(link), poll_interval_s=0, **kw)
    metrics = ServingMetrics()
    metrics.watch(holder)
    holder.load_initial()
    return holder, metrics


def _metric(metrics: ServingMetrics, prefix: str) -> float:
    lines = [line for line in metrics.render().decode().splitlines() if line.startswith(prefix)]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_a_fifo_artifact_is_refused_visibly_and_a_later_valid_one_loads(artifacts, tmp_path, caplog):
    fifo = shutil.copytree(artifacts["hash"], tmp_path / "fifo")
    (fifo / "dense.safetensors").unlink()
    os.mkfifo(fifo / "dense.safetensors")
    link = tmp_path / "current"
    link.symlink_to(artifacts["hash"])
    holder, metrics = _holder(link)
    good = holder.store.version
    _point(link, fifo)
    with caplog.at_level(logging.INFO, logger="recsys.serving.reload"):
        assert not _poll_within(holder)
    status = holder.status
    assert status.state == "failed" and status.failures == 1 and status.last_failure.reason == "refused"
    assert "is a FIFO" in status.last_failure.error and str(fifo / "dense.safetensors") in status.last_failure.error
    assert str(fifo) in status.last_failure.source  # where the refused copy lives, not only the manifest id it shares
    assert holder.store.version == good and holder.ready
    assert _metric(metrics, 'recsys_model_reload_failures_total{reason="refused"}') == 1
    assert _metric(metrics, "recsys_model_reload_failing") == 1
    assert _metric(metrics, "recsys_model_last_reload_failure_timestamp_seconds") > 0
    assert 'recsys_model_last_reload_error_info{error="' in metrics.render().decode()
    assert any(r.levelno == logging.ERROR and "is a FIFO" in r.getMessage() and str(fifo) in r.getMessage() for r in caplog.records)

    _point(link, artifacts["full-int8"])  # a later valid artifact (another method and dtype: same interface)
    with caplog.at_level(logging.INFO, logger="recsys.serving.reload"):
        assert _poll_within(holder)
    assert holder.store.manifest.dtype == "int8" and holder.status.state == "ok"
    assert _metric(metrics, "recsys_model_reload_failing") == 0
    loaded = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "loaded version" in r.getMessage()]
    assert loaded and holder.store.version in loaded[-1] and str(artifacts["full-int8"]) in loaded[-1]


class _SlowSource(LocalSource):
    """A folder whose fetch waits for ``release`` (a stalled network file system, a slow registry)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release_fetch = threading.Event()
        self.stall = False

    def fetch(self, ref: SourceRef) -> Path:
        if self.stall:
            self.release_fetch.wait(60)
        return super().fetch(ref)


def test_a_stuck_load_is_abandoned_after_the_timeout(artifacts, tmp_path):
    link = tmp_path / "current"
    link.symlink_to(artifacts["hash"])
    source = _SlowSource(link)
    holder = ModelHolder(source, poll_interval_s=0, load_timeout_s=0.5)
    metrics = ServingMetrics()
    metrics.watch(holder)
    holder.load_initial()
    good = holder.store.version
    source.stall = True
    _point(link, artifacts["full-int8"])
    start = time.monotonic()
    assert not _poll_within(holder)
    assert time.monotonic() - start < 10
    failure = holder.status.last_failure
    assert failure.reason == "timeout" and "did not finish within 0.5 s" in failure.error
    assert holder.status.abandoned == 1 and _metric(metrics, "recsys_model_abandoned_loads") == 1
    assert _metric(metrics, 'recsys_model_reload_failures_total{reason="timeout"}') == 1
    assert not _poll_within(holder)  # the refused key is not retried (no pile of stuck loads)
    source.release_fetch.set()
    deadline = time.monotonic() + 60
    while holder.status.abandoned and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder.status.abandoned == 0 and holder.store.version == good  # its late result is discarded

    source.stall = False
    with pytest.raises(TimeoutError, match="did not finish"):  # start-up is bounded too
        slow = _SlowSource(artifacts["hash"])
        slow.stall = True
        ModelHolder(slow, poll_interval_s=0, load_timeout_s=0.3).load_initial()


@pytest.mark.parametrize("allow", [False, True])
def test_another_dimension_is_refused_unless_allowed(artifacts, tmp_path, allow):
    link = tmp_path / "current"
    link.symlink_to(artifacts["hash"])
    holder, metrics = _holder(link, allow_interface_change=allow)
    assert holder.store.width == 16
    _point(link, artifacts["dim8"])
    assert _poll_within(holder) is allow
    if allow:
        assert holder.store.width == 8 and holder.status.state == "ok"
        return
    failure = holder.status.last_failure
    assert holder.store.width == 16 and failure.reason == "interface"
    assert "dimension 16 -> 8 (every feature)" in failure.error and "--allow-interface-change" in failure.error
    assert _metric(metrics, 'recsys_model_reload_failures_total{reason="interface"}') == 1
    _point(link, artifacts["hash"])  # back to the served version: nothing failing any more
    assert not _poll_within(holder) and holder.status.state == "ok" and holder.status.failures == 1


def test_interface_changes_name_features_and_dense_fields():
    from recsys.serving.interface import Interface, changes

    old = Interface({"C1": (16, False, False), "C2": (16, True, False), "C3": (16, False, False)}, ("I1", "I2"))
    assert changes(old, old) == []
    new = Interface({"C1": (16, False, False), "C2": (16, True, True), "C4": (8, False, False)}, ("I1",))
    assert changes(old, new) == [
        "sparse features removed: C3",
        "sparse features added: C4",
        "single/multi-valued or weighted changed: C2",
        "dense features ['I1', 'I2'] -> ['I1']",
    ]
    wider = Interface({"C1": (32, False, False), "C2": (16, True, False), "C3": (16, False, False)}, ("I1", "I2"))
    assert changes(old, wider) == ["dimension 16 -> 32 (C1)"]


def test_serve_logs_info_lines_with_timestamps():
    """The configured format applies although importing fbgemm_gpu has already set up logging."""
    code = (
        "import logging, recsys.serving.app, fbgemm_gpu; recsys.serving.app.configure_logging('info'); "
        "logging.getLogger('recsys.serving.reload').info('loaded version abc')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    err = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300).stderr
    lines = [line for line in err.splitlines() if line.endswith("loaded version abc")]
    assert len(lines) == 1, err[-2000:]
    assert time.strftime("%Y-%m-%d") in lines[0] and " INFO recsys.serving.reload: " in lines[0], lines


def test_serve_refuses_an_unusable_artifact_in_one_line(artifacts, tmp_path, capsys):
    """At start-up a FIFO table file is an error naming it (it used to block for ever), not a traceback."""
    from recsys.cli import main

    fifo = shutil.copytree(artifacts["hash"], tmp_path / "fifo")
    (fifo / "embedding.safetensors").unlink()
    os.mkfifo(fifo / "embedding.safetensors")
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(main(["serve", "--model", str(fifo), "--port", "0", "--poll-interval", "0"])), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive() and out == [2]
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("recsys serve: ") and str(fifo / "embedding.safetensors") in err[-1] and "is a FIFO" in err[-1]


def test_a_refusal_under_a_non_utf8_folder_name_keeps_readyz_and_metrics_answering(artifacts, tmp_path):
    """The refused folder's name is not UTF-8 (a surrogate escape in Python): /readyz and /metrics still answer."""
    from fastapi.testclient import TestClient

    from recsys.serving.app import create_app
    from recsys.serving.settings import ServeSettings

    bad = shutil.copytree(artifacts["hash"], tmp_path / os.fsdecode(b"bad-\xff"))
    (bad / "dense.safetensors").unlink()
    os.mkfifo(bad / "dense.safetensors")
    link = tmp_path / "current"
    link.symlink_to(artifacts["hash"])
    holder = ModelHolder(LocalSource(link), poll_interval_s=0)
    holder.load_initial()
    app = create_app(ServeSettings(model=str(link), poll_interval_s=0), holder=holder)
    _point(link, bad)
    assert not _poll_within(holder)
    with TestClient(app) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and "bad-\udcff" in ready.json()["reload"]["last_failure"]["source"]
        metrics = client.get("/metrics")
        assert metrics.status_code == 200 and "recsys_model_last_reload_error_info" in metrics.text


def test_an_unreadable_source_is_reported_once_and_cleared(artifacts, tmp_path, caplog):
    link = tmp_path / "current"
    link.symlink_to(artifacts["hash"])
    holder, metrics = _holder(link)
    empty = tmp_path / "empty"
    empty.mkdir()
    _point(link, empty)
    with caplog.at_level(logging.WARNING, logger="recsys.serving.reload"):
        assert not any(_poll_within(holder) for _ in range(3))
    assert "no manifest.json" in holder.status.poll_error and holder.status.state == "ok"
    assert sum("cannot poll the model source" in r.getMessage() for r in caplog.records) == 1  # once, not at every poll
    assert _metric(metrics, 'recsys_model_reload_failures_total{reason="poll"}') == 1
    _point(link, artifacts["hash"])
    assert not _poll_within(holder) and holder.status.poll_error is None
