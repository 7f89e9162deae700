"""The HTTP lookup service: FastAPI on uvicorn over the in-process lookup layer.

Endpoints: ``POST /v1/embeddings``, ``POST /v1/score``, ``GET /v1/metadata``, ``GET /healthz``,
``GET /readyz``, ``GET /metrics`` (Prometheus text), OpenAPI docs at ``/docs``. Client errors
(malformed JSON, wrong types, unknown features, too many items, non-finite numbers, bodies over
the limit) are 4xx with a ``detail`` message. ``/v1/embeddings`` answers raw little-endian
float32 rows instead of JSON when asked with ``Accept: application/octet-stream``.

Lookups run inline on the event loop (one torch thread, no thread-pool hop): they are short
and CPU-bound, so this is the fastest way through one worker on a few cores.

Example:
    $ recsys serve --model artifacts/dlrm-hash-int8 --port 8000
    $ curl -s localhost:8000/v1/score -d '{"requests": [{"dense": {"I1": 3}, "sparse": {"C1": "68fd1e64"}}]}'
"""

import hmac
import json
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from serving.encode import RequestError
from serving.metrics import BodyLimitMiddleware, MetricsMiddleware, ServingMetrics
from serving.reload import Listener, ModelHolder
from serving.schemas import EmbeddingsResponse, ScoreResponse, dump_rows, request_models
from serving.settings import ServeSettings
from serving.source import make_source
from serving.store import Store

log = logging.getLogger("serving.app")
BINARY = "application/octet-stream"


def _json(payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")


def make_holder(settings: ServeSettings) -> ModelHolder:
    """The model holder of ``settings.model``, with its first version loaded (raises if unusable)."""
    holder = ModelHolder(make_source(settings.model, settings.cache_dir, settings.tracking_uri), settings.poll_interval_s)
    holder.load_initial()
    return holder


def _record_reloads(metrics: ServingMetrics) -> Listener:
    def listener(result: str, store: Store | None, detail: str) -> None:
        metrics.reloads.labels(result=result).inc()
        if store is not None:
            metrics.set_model(store.version, store.manifest.method.name, store.manifest.dtype)

    return listener


def create_app(settings: ServeSettings, holder: ModelHolder | None = None, metrics: ServingMetrics | None = None) -> FastAPI:
    """The ASGI app; loads the model first unless a loaded ``holder`` is given."""
    torch.set_num_threads(settings.torch_threads)
    metrics = metrics or ServingMetrics()
    holder = holder or make_holder(settings)
    holder.listener = _record_reloads(metrics)
    current = holder.store
    metrics.set_model(current.version, current.manifest.method.name, current.manifest.dtype)
    models = request_models(settings)
    EmbeddingsRequest, ScoreRequest = models.embeddings, models.score

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder.start()
        yield
        holder.stop()

    app = FastAPI(title="recsys lookup service", version="1", lifespan=lifespan)

    async def authorised(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    async def store() -> Store:
        return holder.store

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()[:20]]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.post("/v1/embeddings", dependencies=[Depends(authorised)], responses={200: {"model": EmbeddingsResponse}})
    async def embeddings(body: EmbeddingsRequest, request: Request, s: Store = Depends(store)) -> Response:  # type: ignore[valid-type]
        """Vectors of ``items`` (feature, raw value) or of ``entities`` (feature -> raw value(s))."""
        if body.items is not None:
            vectors = s.embeddings([(i.feature, i.value) for i in body.items])
            metrics.items.labels(kind="pairs").inc(len(body.items))
            if BINARY in request.headers.get("accept", ""):
                headers = {"X-Model-Version": s.version, "X-Embedding-Dim": str(vectors.shape[1])}
                return Response(np.ascontiguousarray(vectors, "<f4").tobytes(), media_type=BINARY, headers=headers)
            return _json({"version": s.version, "dim": int(vectors.shape[1]), "vectors": vectors.tolist()})
        found = s.entities(body.entities)
        metrics.items.labels(kind="entities").inc(len(found))
        entities = [{k: v.tolist() for k, v in e.items()} for e in found]
        return _json({"version": s.version, "dim": s.width, "entities": entities})

    @app.post("/v1/score", dependencies=[Depends(authorised)], responses={200: {"model": ScoreResponse}})
    async def score(body: ScoreRequest, s: Store = Depends(store)) -> Response:  # type: ignore[valid-type]
        """Click probabilities of full requests (dense + sparse raw values)."""
        scores = s.score(dump_rows(body.requests))
        metrics.items.labels(kind="scored").inc(len(scores))
        return _json({"version": s.version, "scores": scores.tolist()})

    @app.get("/v1/metadata", dependencies=[Depends(authorised)])
    def metadata(s: Store = Depends(store)) -> dict[str, Any]:
        """The served model: version, method, dtype, features, test metrics."""
        return s.metadata()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: a verified model is loaded and the service is not shutting down."""
        if not holder.ready:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return JSONResponse({"status": "ready", "version": holder.store.version})

    @app.get("/metrics", dependencies=[Depends(authorised)])
    def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.state.holder = holder
    app.state.metrics = metrics
    return app


def serve(settings: ServeSettings) -> None:
    """Run the service until SIGINT/SIGTERM; in-flight requests finish (graceful shutdown)."""
    import uvicorn

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    log.info("listening on http://%s:%d", settings.host, settings.port)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=settings.graceful_timeout_s, access_log=False)
