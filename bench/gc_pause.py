"""How long Python's full garbage collection pauses a lookup service, with and without ``gc.freeze()``.

Loads the service of ``--model`` in this process (as a ``recsys serve`` worker does), times a few
full collections (``gc.collect()``: what the interpreter runs by itself now and then, with every
request of the process waiting), then freezes the objects alive after the load as the worker does
(``recsys.serving.fronts.freeze_heap``; ``recsys serve --no-gc-freeze`` turns it off) and times them again.

Usage: ``python -m bench.serving_bench --quick`` first (it writes the artifact), then
``python -m bench.gc_pause [--model bench_out/serving/criteo-full-int8] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from recsys.serving.app import create_service
from recsys.serving.fronts import freeze_heap
from recsys.serving.settings import ServeSettings


def full_collection_ms() -> float:
    start = time.perf_counter()
    gc.collect()
    return 1e3 * (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bench_out/serving/criteo-full-int8")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    settings = ServeSettings(model=args.model, poll_interval_s=0, log_level="warning")
    service = create_service(settings)
    before = [full_collection_ms() for _ in range(args.rounds)]
    frozen = freeze_heap(settings)
    after = [full_collection_ms() for _ in range(args.rounds)]
    print(f"service of {args.model} (model version {service.holder.store.version}): {frozen:,} objects frozen")
    print(f"full collection: {statistics.median(before):.1f} ms before gc.freeze() ({', '.join(f'{x:.1f}' for x in before)}), "
          f"{statistics.median(after):.2f} ms after ({', '.join(f'{x:.2f}' for x in after)})")  # fmt: skip


if __name__ == "__main__":
    main()
