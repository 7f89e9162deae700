"""What a user reads: `recsys methods` is readable, a training run prints no library noise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import pytest

from recsys.embeddings import available_methods
from recsys.sharded import DEPRECATION, sharded_tensor_access


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "recsys.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_methods_lists_every_method_with_readable_types_and_defaults():
    done = _cli("methods")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "<class" not in out and "PydanticUndefined" not in out and "typing." not in out
    listed = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert listed == available_methods()
    options = [line for line in out.splitlines() if line.startswith("    ")]
    assert options and all(re.match(r"    \w+: \S.* = \S", line) for line in options), options
    assert any(line.startswith("    update_every: int | null, ≥ 1 = 100  ΔT: ") for line in options)


def test_only_the_sharded_tensor_deprecation_is_dropped():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with sharded_tensor_access():
            warnings.warn(DEPRECATION, FutureWarning, stacklevel=1)
            warnings.warn("another future change", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["another future change"]


@pytest.mark.timeout(300)
def test_a_training_run_prints_no_deprecation_or_tracing_notice(tmp_path):
    assert _cli("data", "synth", "--out", str(tmp_path / "d"), "--rows", "3000", "--profile", "small").returncode == 0
    done = _cli(
        "train",
        "--config",
        "quickstart",
        "--out",
        str(tmp_path / "r"),
        "--set",
        f"data.path={tmp_path / 'd'}",
        "--set",
        "training.epochs=1",
        "--set",
        "tracking.enabled=false",
        "--set",
        "training.progress=false",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "test_auc" in done.stdout
    for noise in ("FutureWarning", "ShardedTensor", "is_fx_tracing"):
        assert noise not in done.stderr, done.stderr[-2000:]
