"""The served vocabulary index (hash table) against the sorted-key binary search it replaced: memory,
build time and CPU µs per lookup of a request, alternated run by run on the same requests.

Usage: ``python -m bench.vocab_bench [--artifact bench_out/serving/criteo-full-int8] [--ids 512] [--rounds 5]``
(the artifact of ``python -m bench.serving_bench --quick``, built there if missing). Requests: ``--ids``
pairs uniform over the features, then over each vocabulary, ``--unseen`` of them random ids.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from recsys.export.artifact import MANIFEST, Manifest
from recsys.export.files import artifact_path
from recsys.serving.vocabulary import SortedVocabularies, Vocabularies, read_vocabulary


def _requests(ids: list[np.ndarray], n: int, unseen: float, count: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        feature = rng.integers(0, len(ids), n)
        raw = np.array([ids[f][rng.integers(0, len(ids[f]))] if len(ids[f]) else 0 for f in feature], np.int64)
        new = rng.random(n) < unseen
        raw[new] = rng.integers(-(2**63), 2**63 - 1, int(new.sum()))
        out.append((feature, raw))
    return out


def _cpu_us(index, requests: list[tuple[np.ndarray, np.ndarray]], seconds: float) -> float:
    start, k = time.process_time(), 0
    while time.process_time() - start < seconds:
        feature, raw = requests[k % len(requests)]
        index.lookup(feature, raw)
        k += 1
    return 1e6 * (time.process_time() - start) / k


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifact", default="bench_out/serving/criteo-full-int8")
    p.add_argument("--ids", type=int, default=512, help="ids per request")
    p.add_argument("--unseen", type=float, default=0.1, help="share of random (unseen) ids")
    p.add_argument("--rounds", type=int, default=5, help="alternating runs of each index")
    p.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per run")
    args = p.parse_args()
    art = Path(args.artifact)
    if not (art / MANIFEST).exists():
        from bench.serving_fixture import fake_dataset, fake_run
        from recsys.export import export_run

        fake_dataset(art.parent / "criteo-data")
        export_run(fake_run(art.parent / "criteo-data", art.parent / "criteo-run"), art, dtype="int8", overwrite=True)
    manifest = Manifest.model_validate_json((art / MANIFEST).read_text())
    paths = [artifact_path(art, manifest.dataset.vocabularies[f.name]) for f in manifest.context.features]
    built = {}
    for kind in (SortedVocabularies, Vocabularies):
        start = time.process_time()
        built[kind.__name__] = (kind(paths), time.process_time() - start)
    new, old = built["Vocabularies"][0], built["SortedVocabularies"][0]
    requests = _requests([read_vocabulary(path)[0] for path in paths], args.ids, args.unseen, 256)
    for feature, raw in requests[:32]:
        assert np.array_equal(new.lookup(feature, raw), old.lookup(feature, raw)), "the indexes disagree"
    runs: dict[str, list[float]] = {"SortedVocabularies": [], "Vocabularies": []}
    for r in range(args.rounds):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            runs[name].append(_cpu_us(built[name][0], requests, args.seconds))
    old_bytes = old.keys.nbytes + old.low.nbytes + old.index.nbytes
    result = {
        "entries": new.entries,
        "ids_per_request": args.ids,
        "unseen": args.unseen,
        "load_average": open("/proc/loadavg").read().strip(),
        "sorted": {
            "bytes": old_bytes,
            "build_cpu_s": built["SortedVocabularies"][1],
            "lookup_cpu_us": statistics.median(runs["SortedVocabularies"]),
            "runs": runs["SortedVocabularies"],
        },
        "hash": {
            "bytes": new.nbytes,
            "build_cpu_s": built["Vocabularies"][1],
            "lookup_cpu_us": statistics.median(runs["Vocabularies"]),
            "runs": runs["Vocabularies"],
            "overflow_entries": int(len(new.over_ids)),
        },
    }
    print(json.dumps(result, indent=1))
    s, h = result["sorted"], result["hash"]
    print(
        f"{new.entries:,} entries: sorted keys {s['bytes'] / 2**20:.1f} MiB, {s['lookup_cpu_us']:.0f} µs per {args.ids} ids; "
        f"hash table {h['bytes'] / 2**20:.1f} MiB ({h['bytes'] / s['bytes']:.2f}×), {h['lookup_cpu_us']:.0f} µs "
        f"({s['lookup_cpu_us'] / h['lookup_cpu_us']:.2f}× faster); build {s['build_cpu_s']:.2f} s / {h['build_cpu_s']:.2f} s CPU"
    )


if __name__ == "__main__":
    main()
