"""The HTTP fronts that run the lookup app: uvicorn (Python, uvloop + httptools) or granian (Rust, hyper).

``recsys serve --server uvicorn-lean|uvicorn|granian|granian-rsgi`` picks one (``uvicorn-lean`` by
default); the app, and so
validation, limits, auth, metrics and hot reload, is the same ASGI app on all four; ``uvicorn-lean``
answers ids.v1 lookups inside uvicorn's protocol on its one thread (``recsys.serving.lean_uvicorn``)
and ``granian-rsgi`` through granian's RSGI interface (``recsys.serving.rsgi``), both without the
ASGI layers, handing every other request to that app. Either way SIGINT/SIGTERM stops accepting,
lets in-flight requests finish (up to ``graceful_timeout_s``), then runs the app's shutdown,
which logs ``stopped serving``.

Slow clients (per connection, both fronts):

* a request's headers must arrive within ``header_timeout_s``: uvicorn (``recsys.serving.transport``)
  then answers 408 and closes; granian (hyper's header read timeout) closes the connection;
* an idle keep-alive connection is closed after ``keep_alive_s`` (uvicorn's keep-alive timer;
  on granian (both interfaces) hyper's header read timeout, which also runs while a connection waits for its next
  request, so granian closes idle connections after ``header_timeout_s``);
* a body must arrive within ``body_timeout_s`` of its headers, else 408 (``recsys.serving.limits``);
* uvicorn answers 503 to requests beyond ``max_connections`` open connections or running
  requests; granian handles at most ``max_connections`` requests at once per worker (its
  backpressure: more wait to be read); the app answers 503 beyond ``max_inflight``.

``workers > 1`` runs that many processes on one port (uvicorn's supervisor or granian's), each
loading the model and polling for reloads itself; the settings reach them as JSON in
``RECSYS_SERVE_SETTINGS``.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from typing import Any

from recsys.serving.settings import ServeSettings

log = logging.getLogger("recsys.serving.fronts")
SETTINGS_ENV = "RECSYS_SERVE_SETTINGS"


def freeze_heap(settings: ServeSettings) -> int:
    """Once the model is loaded: collect, then move every object alive now out of the collector's
    reach (``gc.freeze``), so that Python's full collections no longer scan torch, the model and the
    app (~200 ms each on this service, with requests waiting). Objects made later (requests, a hot
    reload's versions) are collected as usual. Returns the objects frozen (0 with ``gc_freeze`` off)."""
    if not settings.gc_freeze:
        return 0
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("gc.freeze(): %d objects alive after the model load left out of garbage collection", frozen)
    return frozen


def worker_app() -> Any:
    """The app of one worker process: the settings come from the environment."""
    from recsys.serving.app import configure_logging, create_app

    settings = ServeSettings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logging(settings.log_level)
    if settings.server == "granian-rsgi":
        from recsys.serving.app import create_service
        from recsys.serving.rsgi import LeanFront

        app: Any = LeanFront(create_service(settings))
    elif settings.server == "granian":
        app = create_app(settings)
    else:
        app = uvicorn_app(settings)
    freeze_heap(settings)
    return app


def uvicorn_app(settings: ServeSettings) -> Any:
    """The ASGI app for uvicorn, with the protocol class's per-process settings (header deadline;
    on ``uvicorn-lean`` the service that answers ids.v1 lookups) set."""
    from recsys.serving.app import create_service
    from recsys.serving.transport import HeaderTimeoutProtocol

    HeaderTimeoutProtocol.header_timeout_s = settings.header_timeout_s
    service = create_service(settings)
    if settings.server == "uvicorn-lean":
        from recsys.serving.lean_uvicorn import LeanHttpProtocol, check_built

        LeanHttpProtocol.service = service
        check_built()
    return service.asgi


def serve(settings: ServeSettings) -> None:
    """Run the service on ``settings.server`` until SIGINT/SIGTERM (graceful shutdown)."""
    from recsys.serving.app import configure_logging

    configure_logging(settings.log_level)
    if settings.server in ("granian", "granian-rsgi"):
        _granian(settings)
    else:
        _uvicorn(settings)


def _uvicorn(settings: ServeSettings) -> None:
    import uvicorn

    from recsys.serving.lean_uvicorn import LeanHttpProtocol
    from recsys.serving.transport import HeaderTimeoutProtocol

    common = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=LeanHttpProtocol if settings.server == "uvicorn-lean" else HeaderTimeoutProtocol,
        timeout_graceful_shutdown=settings.graceful_timeout_s,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
    )
    if settings.workers > 1:
        os.environ[SETTINGS_ENV] = settings.model_dump_json()
        log.info("uvicorn listening on http://%s:%d with %d worker processes", settings.host, settings.port, settings.workers)
        config = uvicorn.Config("recsys.serving.fronts:worker_app", factory=True, workers=settings.workers, **common)
        sock = config.bind_socket()
        # uvicorn's shared socket has protocol 0, so asyncio does not turn Nagle off per connection as it
        # does for sockets it opens itself (responses would wait ~40 ms for delayed ACKs); accepted
        # connections inherit the listening socket's TCP_NODELAY (Linux)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        from uvicorn.supervisors import Multiprocess

        Multiprocess(config, sockets=[sock]).run()
        return
    app = uvicorn_app(settings)
    freeze_heap(settings)
    log.info("uvicorn%s listening on http://%s:%d", " (lean)" if settings.server == "uvicorn-lean" else "", settings.host, settings.port)
    uvicorn.run(app, **common)


def _granian(settings: ServeSettings) -> None:
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.log import LogLevels

    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    rsgi = settings.server == "granian-rsgi"
    log.info(
        "granian%s listening on http://%s:%d with %d worker process(es)", " (RSGI)" if rsgi else "", settings.host, settings.port, settings.workers
    )
    server = Granian(
        "recsys.serving.fronts:worker_app",
        factory=True,
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI if rsgi else Interfaces.ASGI,
        workers=settings.workers,
        runtime_threads=1,
        loop=Loops.auto,
        http=HTTPModes.http1,
        websockets=False,
        http1_settings=HTTP1Settings(header_read_timeout=max(1, round(settings.header_timeout_s * 1000)), keep_alive=True),
        backpressure=settings.max_connections,
        log_level=LogLevels(settings.log_level.lower()),
        log_access=False,
        workers_kill_timeout=max(1, round(settings.graceful_timeout_s)),
    )
    server.serve()
