"""The served model and its hot reload: poll the source, load + verify beside, swap the reference.

Readers take ``holder.store`` once per request and use that object to the end, so a swap never
changes a model under a running request. A new version is loaded and verified completely
before the swap (under a lock), in a thread given ``load_timeout_s``: a load that does not finish
in time is abandoned (its result, should it come, is discarded). A version that fails
(checksum, unreadable or misplaced file, incompatible, too slow, or another interface:
``recsys.serving.interface``) is refused with a logged error, remembered so it is not retried until its
key changes again, and the old store keeps serving. ``status`` says how the last attempt went
(``/readyz`` and ``/metrics`` show it); every successful load is logged with its version.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from recsys.export.loader import load_artifact
from recsys.serving.interface import Interface, changes
from recsys.serving.source import Source, SourceRef
from recsys.serving.store import Store

log = logging.getLogger("recsys.serving.reload")
Listener = Callable[[str, Store | None, str], None]  # (result: "loaded" or one of FAILURES, new store, detail)
FAILURES = ("refused", "timeout", "interface", "poll")  # why a version is not served; "poll": the source cannot be read


class LoadTimeout(TimeoutError):
    """A load that did not finish within ``load_timeout_s``."""


@dataclass
class Failure:
    """One version not served: why (``FAILURES``), which (with where it lives), the error, when."""

    reason: str
    source: str
    error: str
    at: float


@dataclass
class ReloadStatus:
    """``state`` "failed" while the source offers a version that could not be loaded, else "ok"."""

    state: str = "ok"
    failures: int = 0  # versions refused since start
    abandoned: int = 0  # loads past their timeout still running
    last_failure: Failure | None = None
    poll_error: str | None = None  # why the last poll could not read the source (None: it could)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelHolder:
    """Holds the current ``Store`` of a source and reloads it when the source changes."""

    def __init__(
        self,
        source: Source,
        poll_interval_s: float = 30.0,
        listener: Listener | None = None,
        load_timeout_s: float = 120.0,
        allow_interface_change: bool = False,
    ) -> None:
        self.source = source
        self.poll_interval_s = poll_interval_s
        self.load_timeout_s = load_timeout_s  # <= 0: unbounded
        self.allow_interface_change = allow_interface_change
        self.listener: Listener = listener or (lambda result, store, detail: None)
        self.status = ReloadStatus()
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._ref: SourceRef | None = None
        self._refused: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def store(self) -> Store:
        store = self._store
        if store is None:
            raise RuntimeError("no model loaded yet")
        return store

    @property
    def ready(self) -> bool:
        return self._store is not None and not self._stop.is_set()

    def load_initial(self) -> Store:
        """Load the source's current version; raises if it cannot be served (``LoadTimeout`` when too slow)."""
        ref = self.source.current()
        self._swap(ref, *self._load_bounded(ref))
        return self.store

    def _load(self, ref: SourceRef) -> Store:
        return Store(load_artifact(self.source.fetch(ref)), ref.label)

    def _load_bounded(self, ref: SourceRef) -> tuple[Store, float]:
        """``(store, seconds)`` of ``ref``, loaded in a thread given ``load_timeout_s``."""
        start, result, done = time.monotonic(), {}, threading.Event()
        abandoned = threading.Event()

        def work() -> None:
            try:
                result["store"] = self._load(ref)
            except BaseException as exc:  # handed to the waiting caller
                result["error"] = exc
            with self._lock:  # done and abandoned are decided under the lock: exactly one side counts
                done.set()
                late = abandoned.is_set()
                if late:
                    self.status.abandoned -= 1
            if late:
                log.warning(
                    "the abandoned load of %s ended after %.1f s (%s); its result is discarded",
                    ref.describe(),
                    time.monotonic() - start,
                    "failed" if "error" in result else "loaded",
                )

        if self.load_timeout_s <= 0:
            work()
        else:
            threading.Thread(target=work, name=f"model-load-{ref.label}", daemon=True).start()
            done.wait(self.load_timeout_s)
            with self._lock:
                if not done.is_set():
                    abandoned.set()
                    self.status.abandoned += 1
            if abandoned.is_set():
                raise LoadTimeout(f"loading {ref.describe()} did not finish within {self.load_timeout_s:g} s (--load-timeout); abandoned")
        if "error" in result:
            raise result["error"]
        return result["store"], time.monotonic() - start

    def _swap(self, ref: SourceRef, store: Store, seconds: float) -> None:
        with self._lock:
            old, self._store, self._ref = self._ref, store, ref
            self.status.state = "ok"
        if old is not None and old.key != ref.key:
            self.source.release(old)
        log.info(
            "loaded version %s (method %s, dtype %s) from %s in %.2f s; serving it",
            store.version,
            store.manifest.method.name,
            store.manifest.dtype,
            ref.where or ref.label,
            seconds,
        )
        self.listener("loaded", store, ref.label)

    def _fail(self, reason: str, ref: SourceRef, error: str) -> None:
        self._refused = ref.key
        with self._lock:
            self.status.state, self.status.last_failure = "failed", Failure(reason, ref.describe(), error, time.time())
            self.status.failures += 1
        log.error("not serving %s (%s): %s; still serving version %s", ref.describe(), reason, error, self._ref.label if self._ref else None)
        self.listener(reason, None, f"{ref.describe()}: {error}")

    def poll_once(self) -> bool:
        """Reload if the source moved to a new version; True when a new version is now served."""
        try:
            ref = self.source.current()
        except Exception as exc:  # registry unreachable, folder mid-update: keep serving
            if self.status.poll_error != str(exc):  # each new problem logged once, not at every poll
                log.warning("cannot poll the model source: %s", exc)
                self.listener("poll", None, str(exc))
            self.status.poll_error = str(exc)
            return False
        self.status.poll_error = None
        if self._ref is not None and ref.key == self._ref.key:
            self.status.state = "ok"  # back to the served version: nothing is failing now
            return False
        if ref.key == self._refused:
            return False
        try:
            store, seconds = self._load_bounded(ref)
        except LoadTimeout as exc:
            self._fail("timeout", ref, str(exc))
            return False
        except Exception as exc:
            self._fail("refused", ref, str(exc))
            return False
        if self._store is not None and not self.allow_interface_change:
            diff = changes(Interface.of(self._store), Interface.of(store))
            if diff:
                self._fail(
                    "interface",
                    ref,
                    f"its interface differs from the served one: {'; '.join(diff)} "
                    "(start the service with --allow-interface-change to accept such a swap)",
                )
                return False
        self._swap(ref, store, seconds)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            self.poll_once()

    def start(self) -> None:
        """Poll in a daemon thread (no-op when ``poll_interval_s <= 0``)."""
        if self.poll_interval_s > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="model-reload", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
