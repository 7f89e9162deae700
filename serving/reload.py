"""The served model and its hot reload: poll the source, load + verify beside, swap the reference.

Readers take ``holder.store`` once per request and use that object to the end, so a swap never
changes a model under a running request. A new version is loaded and verified completely
before the swap (under a lock); an artifact that fails (checksum, incompatible, unreadable) is
refused with a logged error, remembered so it is not retried until its key changes again, and
the old store keeps serving.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from recsys.export.loader import load_artifact
from serving.source import Source, SourceRef
from serving.store import Store

log = logging.getLogger("serving.reload")
Listener = Callable[[str, Store | None, str], None]  # (result: "loaded" | "refused", new store, detail)


class ModelHolder:
    """Holds the current ``Store`` of a source and reloads it when the source changes."""

    def __init__(self, source: Source, poll_interval_s: float = 30.0, listener: Listener | None = None) -> None:
        self.source = source
        self.poll_interval_s = poll_interval_s
        self.listener: Listener = listener or (lambda result, store, detail: None)
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
        """Load the source's current version; raises if it cannot be served."""
        ref = self.source.current()
        self._swap(ref, self._load(ref))
        return self.store

    def _load(self, ref: SourceRef) -> Store:
        return Store(load_artifact(self.source.fetch(ref)), ref.label)

    def _swap(self, ref: SourceRef, store: Store) -> None:
        with self._lock:
            old, self._store, self._ref = self._ref, store, ref
        if old is not None and old.key != ref.key:
            self.source.release(old)
        log.info("serving %s (method %s, dtype %s)", ref.label, store.manifest.method.name, store.manifest.dtype)
        self.listener("loaded", store, ref.label)

    def poll_once(self) -> bool:
        """Reload if the source moved to a new version; True when a new version is now served."""
        try:
            ref = self.source.current()
        except Exception as exc:  # registry unreachable, folder mid-update: keep serving
            log.warning("cannot poll the model source: %s", exc)
            return False
        if (self._ref is not None and ref.key == self._ref.key) or ref.key == self._refused:
            return False
        try:
            store = self._load(ref)
        except Exception as exc:
            self._refused = ref.key
            log.error("refusing model %s, still serving %s: %s", ref.label, self._ref.label if self._ref else None, exc)
            self.listener("refused", None, f"{ref.label}: {exc}")
            return False
        self._swap(ref, store)
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
