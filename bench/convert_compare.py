"""Conversion throughput of this tree against a baseline commit, alternating runs on one box.

On a shared machine absolute rows/s swing with the load; what holds is the ratio of runs made
side by side. This writes one random high-cardinality Criteo file (``recsys.training.bench.convert_bench``),
exports the baseline commit's ``recsys`` with ``git archive`` (building its C extensions, if it has any), then converts the file ``--rounds``
times with each tree in child processes, alternating which goes first, and reports each run's
rows/s and CPU seconds (of the conversion's threads: far steadier than wall time when other
processes share the cores; user and sys apart), minor page faults, peak RSS and the load average,
the medians, and the median of the per-round ratios (new / baseline).

With ``--instructions`` it also counts the instructions each tree executes for one conversion
under valgrind's callgrind (minus those of the imports alone): a measure of work that other
processes on the cores do not change (about 1.5 minutes per 100k rows and tree).

Usage: ``python -m bench.convert_compare [--base main] [--rows 500000] [--rounds 5] [--instructions]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

from recsys.training.bench.convert_bench import write_random_criteo

REPO = Path(__file__).resolve().parents[1]


def export_tree(ref: str, dest: Path) -> Path:
    """The ``recsys`` package of commit ``ref`` under ``dest``, its C extensions built in place."""
    archive = dest / "base.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "archive", ref, "recsys"], cwd=REPO, check=True, stdout=f)
    with tarfile.open(archive) as tar:
        tar.extractall(dest / "tree", filter="data")
    pyproject = subprocess.run(["git", "show", f"{ref}:pyproject.toml"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    modules = tomllib.loads(pyproject).get("tool", {}).get("setuptools", {}).get("ext-modules", [])
    modules = [m for m in modules if all(src.startswith("recsys/") for src in m["sources"])]  # only recsys/ is exported
    if modules:
        subprocess.run([sys.executable, "-c", _BUILD, json.dumps(modules)], cwd=dest / "tree", check=True, capture_output=True)
    return dest / "tree"


_BUILD = (
    "import json, sys; from setuptools import Extension, setup; "
    "setup(script_args=['build_ext', '--inplace', '-q'], ext_modules=[Extension(m['name'], m['sources'], "
    "include_dirs=m.get('include-dirs', []), extra_compile_args=m.get('extra-compile-args', [])) for m in json.loads(sys.argv[1])])"
)


def convert_once(tree: Path, input_path: Path, out_dir: Path) -> dict[str, float]:
    """One conversion by the code in ``tree``, in a child process: rows/s, CPU seconds of all its threads
    (user and sys apart, ``getrusage`` over the conversion), minor page faults, the child's peak RSS and
    the load average when it ended."""
    shutil.rmtree(out_dir, ignore_errors=True)
    code = (
        "import json, resource, sys, time; from pathlib import Path; from recsys.data.convert import convert; "
        "r = resource.getrusage(resource.RUSAGE_SELF); t = time.perf_counter(); "
        "s = convert('criteo', Path(sys.argv[1]), Path(sys.argv[2]), progress=False); "
        "dt = time.perf_counter() - t; e = resource.getrusage(resource.RUSAGE_SELF); "
        "import recsys.data.convert as m; "
        "print(json.dumps(dict(source=m.__file__, rows_per_s=sum(x.rows for x in s.splits.values()) / dt, user_s=e.ru_utime - r.ru_utime, "
        "sys_s=e.ru_stime - r.ru_stime, minor_faults=e.ru_minflt - r.ru_minflt, peak_rss_gib=e.ru_maxrss / 2**20)))"
    )
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # -P and cwd: `python -c` would put the current folder first on sys.path, and from the repository
    # root that imports this tree's recsys for the baseline too
    command = [sys.executable, "-P", "-c", code, str(input_path), str(out_dir)]
    out = subprocess.run(command, env=env, cwd=tree, check=True, capture_output=True, text=True)
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    source = Path(reply.pop("source")).resolve()
    if not source.is_relative_to(tree.resolve()):
        raise RuntimeError(f"the run meant for {tree} imported {source}")
    run = {k: float(v) for k, v in reply.items()}
    run["cpu_s"] = run["user_s"] + run["sys_s"]
    run["load_average"] = os.getloadavg()[0]
    return run


_CONVERT = (
    "import sys; from pathlib import Path; from recsys.data.convert import convert; "
    "convert('criteo', Path(sys.argv[1]), Path(sys.argv[2]), progress=False)"
)
_IMPORTS = "from recsys.data.convert import convert"


def instructions(tree: Path, code: str, args: list[str], work: Path) -> int:
    """Instructions executed by ``python -c code args`` with ``tree`` first on the path (callgrind's Ir)."""
    out = work / "callgrind.out"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-P", "-c", code, *args],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
    )
    for line in out.read_text().splitlines():
        if line.startswith("summary:") or line.startswith("totals:"):
            total = int(line.split()[1])
    out.unlink()
    return total


def conversion_instructions(tree: Path, input_path: Path, work: Path) -> int:
    shutil.rmtree(work / "out", ignore_errors=True)
    return instructions(tree, _CONVERT, [str(input_path), str(work / "out")], work) - instructions(tree, _IMPORTS, [], work)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="baseline commit or branch")
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instructions", action="store_true", help="also count instructions under valgrind")
    parser.add_argument("--out", type=Path, default=REPO / "bench_out" / "convert_compare.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="convert_compare_"))
    try:
        base = export_tree(args.base, work)
        input_path = work / "criteo.tsv"
        write_random_criteo(input_path, args.rows)
        runs: dict[str, list[dict[str, float]]] = {"base": [], "new": []}
        for r in range(args.rounds):
            order = [("base", base), ("new", REPO)] if r % 2 == 0 else [("new", REPO), ("base", base)]
            for name, tree in order:
                run = convert_once(tree, input_path, work / "out")
                runs[name].append(run)
                print(
                    f"round {r + 1} {name}: {run['rows_per_s']:,.0f} rows/s, CPU {run['cpu_s']:.2f} s (user {run['user_s']:.2f} + "
                    f"sys {run['sys_s']:.2f}), {run['minor_faults']:,.0f} minor faults, peak RSS {run['peak_rss_gib']:.2f} GiB, "
                    f"load {run['load_average']:.2f}",
                    flush=True,
                )
        counted = {}
        if args.instructions:
            for name, tree in (("base", base), ("new", REPO)):
                counted[name] = conversion_instructions(tree, input_path, work)
                print(f"{name}: {counted[name]:,} instructions", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rate = {name: [run["rows_per_s"] for run in runs[name]] for name in runs}
    cpu = {name: [run["cpu_s"] for run in runs[name]] for name in runs}
    ratios = [n / b for n, b in zip(rate["new"], rate["base"])]
    cpu_ratios = [n / b for n, b in zip(cpu["new"], cpu["base"])]
    result = {
        "base": args.base,
        "rows": args.rows,
        "rounds": args.rounds,
        "load_average": round(os.getloadavg()[0], 2),
        "base_rows_per_s": [round(x) for x in rate["base"]],
        "new_rows_per_s": [round(x) for x in rate["new"]],
        "base_median": round(statistics.median(rate["base"])),
        "new_median": round(statistics.median(rate["new"])),
        "median_ratio": round(statistics.median(ratios), 3),
        "base_cpu_s": [round(x, 2) for x in cpu["base"]],
        "new_cpu_s": [round(x, 2) for x in cpu["new"]],
        "median_cpu_ratio": round(statistics.median(cpu_ratios), 3),
        "runs": {name: [{k: round(v, 3) for k, v in run.items()} for run in runs[name]] for name in runs},
    }
    if counted:
        result.update(
            base_instructions=counted["base"], new_instructions=counted["new"], instruction_ratio=round(counted["new"] / counted["base"], 3)
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"median rows/s: base {result['base_median']:,}, new {result['new_median']:,}; "
        f"median ratio new/base {result['median_ratio']} over {args.rounds} rounds; CPU seconds new/base "
        f"{result['median_cpu_ratio']} (load {result['load_average']})"
    )
    if counted:
        print(f"instructions new/base: {result['instruction_ratio']}")
    return result


if __name__ == "__main__":
    main()
