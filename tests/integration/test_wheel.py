"""The wheel: one import root (``recsys``), built-in configs and the speed bench inside it.

Builds the wheel, installs it (``--no-deps``) into a fresh venv that borrows this venv's
dependencies through a ``.pth`` line, and runs the CLI from a folder outside the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _package_folders() -> set[str]:
    """Every folder of the source tree that installs as a package (its import name)."""
    roots = {"recsys": ROOT / "recsys", "recsys.training": ROOT / "training", "recsys.serving": ROOT / "serving"}
    names = set()
    for prefix, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            names.add(".".join((prefix, *rel)))
    for sub in [ROOT / "configs", *(p for p in (ROOT / "configs").rglob("*") if p.is_dir())]:
        names.add(".".join(("recsys.configs", *sub.relative_to(ROOT / "configs").parts)))
    return names


def test_pyproject_lists_every_package_folder():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert listed == _package_folders()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = dist.glob("recsys_compress-*.whl")
    return found


def test_the_wheel_has_one_top_level_name_and_ships_configs_and_the_speed_bench(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"recsys", "recsys_compress-0.1.0.dist-info"}
    for needed in (
        "recsys/training/run.py",
        "recsys/serving/app.py",
        "recsys/training/tune/search.py",
        "recsys/training/bench/speed_report.py",
        "recsys/configs/quickstart.yaml",
        "recsys/configs/model/dlrm.yaml",
    ):
        assert needed in names
    assert any(n.startswith("recsys/data/fastcat.") and n.endswith(".so") for n in names), "the converter's C extension is not in the wheel"
    for ext in ("recsys/data/fastparse.", "recsys/serving/idpath.", "recsys/serving/httpfast."):
        assert any(n.startswith(ext) and n.endswith(".so") for n in names), f"{ext}so is not in the wheel"
    assert zipfile.ZipFile(wheel).read("recsys_compress-0.1.0.dist-info/top_level.txt").decode().split() == ["recsys"]


def test_installed_wheel_trains_the_builtin_quickstart_config_and_runs_the_quick_speed_bench(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    before = set(os.listdir(site))
    # This venv's dependencies (torch, ray, ...), after the fresh venv's own site-packages.
    (site / "zz_borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        # --ignore-installed: the borrowed site holds this checkout's editable install, which pip would take as installed already
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    added = set(os.listdir(site)) - before - {"zz_borrowed.pth"}
    assert {n for n in added if not n.endswith(".dist-info")} == {"recsys"}

    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    recsys = str(env_dir / "bin" / "recsys")

    def run(*args: str, timeout: int = 600) -> str:
        done = subprocess.run([recsys, *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    where = subprocess.run(
        [str(py), "-c", "import recsys, recsys.training.run as r, recsys.data.fastcat as f; print(recsys.source_root(), r.__file__, f.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert where[0] == "None" and where[1].startswith(str(site)) and where[2].startswith(str(site))  # the compiled extension too
    assert "train" in run("--help")
    run("data", "synth", "--out", "data/tiny", "--rows", "3000", "--profile", "small")
    run(
        "train",
        "--config",
        "quickstart",
        "--out",
        "runs/tiny",
        "--set",
        "data.path=data/tiny",
        "--set",
        "training.epochs=1",
        "--set",
        "tracking.enabled=false",
        "--set",
        "training.progress=false",
    )
    assert (work / "runs" / "tiny" / "metrics.json").is_file()
    out = run("bench", "speed", "--quick", "--skip-plain", "--skip-convert", "--out", "speed")
    assert "hash" in out and (work / "speed" / "speed.json").is_file()
