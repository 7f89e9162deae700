"""The KubeRay RayJob example: valid YAML whose entrypoint is a `recsys train` the CLI and the config accept."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from recsys.cli import build_parser
from recsys.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def test_rayjob_entrypoint_is_a_valid_train_command_on_s3():
    job = yaml.safe_load((ROOT / "configs/cluster/rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "recsys"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "train" and args.out.startswith("s3://") and args.address == "auto"
    cfg = load_config(ROOT / Path(args.config).relative_to("/app"), [*args.set, f"training.workers={args.workers}"])
    assert cfg.data.path.startswith("s3://") and cfg.training.placement_strategy == "SPREAD" and cfg.training.workers == 4
    pods = [job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]] + [g["template"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    for pod in pods:  # every node gets the same image and the S3 credentials
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "REGISTRY/recsys:train"
        assert container["envFrom"] == [{"secretRef": {"name": "recsys-s3"}}]
