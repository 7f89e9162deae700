"""The HTTP lookup service: a FastAPI app over the in-process lookup layer (run by ``recsys.serving.fronts``).

Endpoints: ``POST /v1/embeddings``, ``POST /v1/score``, ``GET /v1/metadata``, ``GET /healthz``,
``GET /readyz``, ``GET /metrics`` (Prometheus text), OpenAPI docs at ``/docs``. Client errors
(malformed JSON, wrong types, unknown features, too many items, non-finite numbers, bodies over
the limit, non-JSON content types) are 4xx with a ``detail`` message.

Fast path of ``/v1/embeddings``: the body is decoded once (``json.loads``) and a well-formed
``items`` list is checked in a few C-speed passes instead of building one pydantic object per
item, and answered by a plain ASGI layer (``ItemsFastPath``) before FastAPI's routing; anything
else goes to the route and through the pydantic model, which gives the detailed 422. Vectors go
out as JSON written in bulk by numpy (9 significant digits, exact for float32; see
``recsys.serving.wire``) or, with ``Accept: application/octet-stream``, as raw little-endian float32
rows (``n x dim x 4`` bytes, row i = item i) with the shape and version in the headers
``X-Embedding-Count``, ``X-Embedding-Dim``, ``X-Model-Version``. A body of
``Content-Type: application/vnd.recsys.ids.v1`` (``recsys.serving.idsv1``: whole id arrays per feature)
is answered on the same fast path with whole-array numpy work and float32 rows.

Small lookups run inline on the event loop (one torch thread; a thread-pool hop would cost more
than the lookup); requests with at least ``offload_items`` items run in a worker thread so the
loop keeps reading and answering other connections meanwhile. With ``workers > 1`` each process
loads the artifact and polls for reloads itself; ``/metrics`` describes the process that answered.

Example:
    $ recsys serve --model artifacts/dlrm-hash-int8 --port 8000
    $ curl -s localhost:8000/v1/score -d '{"requests": [{"dense": {"I1": 3}, "sparse": {"C1": "68fd1e64"}}]}'
"""

import hmac
import json
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import numpy as np
import torch
from anyio import to_thread
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from recsys.serving.encode import RequestError
from recsys.serving.idsv1 import CONTENT_TYPE as IDS_V1
from recsys.serving.idsv1 import FormatError
from recsys.serving.idsv1 import decode as decode_ids
from recsys.serving.limits import RequestLimits, replay_receive
from recsys.serving.metrics import MetricsMiddleware, ServingMetrics
from recsys.serving.reload import ModelHolder
from recsys.serving.schemas import EmbeddingsResponse, ScoreResponse, dump_rows, request_models
from recsys.serving.settings import ServeSettings
from recsys.serving.source import make_source
from recsys.serving.store import Store
from recsys.serving.wire import fast_pairs, float32_json

log = logging.getLogger("recsys.serving.app")
BINARY = "application/octet-stream"
_SMALL_JSON = 128  # fewer numbers than this: plain json.dumps is quicker than the bulk formatter
BINARY_DOC = (
    "With `Accept: application/octet-stream` (items only): the vectors as raw little-endian float32, "
    "`count x dim x 4` bytes, row i = item i; headers `X-Embedding-Count`, `X-Embedding-Dim` and "
    "`X-Model-Version` give the shape and the model version. "
    "Read with `numpy.frombuffer(body, '<f4').reshape(count, dim)`."
)
IDS_DOC = (
    f"`Content-Type: {IDS_V1}`: per feature, packed little-endian int64 raw ids or length-prefixed UTF-8 values "
    "(layout in `recsys.serving.idsv1`, built by `recsys.serving.idsv1.encode`); answered with float32 rows as above "
    "(JSON with `Accept: application/json`); 400 names the offset of a malformed body."
)


def _json(payload: dict[str, Any]) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json")


def _vectors_body(version: str, vectors: np.ndarray, binary: bool) -> tuple[bytes, str, dict[str, str]]:
    """``(body, media type, extra headers)`` of the ``items`` answer."""
    if binary:
        headers = {"X-Model-Version": version, "X-Embedding-Dim": str(vectors.shape[1]), "X-Embedding-Count": str(vectors.shape[0])}
        return np.ascontiguousarray(vectors, "<f4").tobytes(), BINARY, headers
    if vectors.size < _SMALL_JSON:
        body = json.dumps({"version": version, "dim": int(vectors.shape[1]), "vectors": vectors.tolist()}, separators=(",", ":")).encode()
    else:
        head = json.dumps({"version": version, "dim": int(vectors.shape[1])}, separators=(",", ":"))[:-1]
        body = head.encode() + b',"vectors":' + float32_json(vectors) + b"}"
    return body, "application/json", {}


class ItemsFastPath:
    """ASGI layer answering ``POST /v1/embeddings`` with a well-formed ``items`` body itself, without
    FastAPI's routing, dependency and request/response objects (about 0.1 ms a request); any other
    request, or one the handler declines (``None``: bad token, content type, JSON or shape), goes on
    to the app with its body replayed, which answers it (and its errors) as the routes define."""

    def __init__(self, app: Any, handler: Any) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/v1/embeddings":
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        answer = await self.handler(scope, raw)
        if answer is None:
            await self.app(scope, replay_receive(raw, receive), send)
            return
        status, body, media_type, extra = answer
        headers = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Invalid(Exception):
    """A request body the model refuses; answered 422 like FastAPI's validation errors."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors


def _validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": ["body", *e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()[:20]]


def _media(ctype: bytes | str | None) -> str:
    """The media type of a Content-Type header, lower case ('' when absent)."""
    if ctype is None:
        return ""
    text = ctype.decode("latin-1") if isinstance(ctype, bytes) else ctype
    return text.split(";")[0].strip().lower()


async def _body(request: Request, binary_ok: bool = False) -> bytes:
    ctype = request.headers.get("content-type")
    if _media(ctype) not in ("application/json", "", *((IDS_V1,) if binary_ok else ())):
        also = f" or {IDS_V1}" if binary_ok else ""
        raise HTTPException(415, f"request bodies are JSON (Content-Type: application/json){also}, got {ctype[:100]!r}")
    return await request.body()


def _validate(model: type[BaseModel], raw: bytes) -> BaseModel:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise _Invalid(_validation_errors(exc)) from None


def make_holder(settings: ServeSettings) -> ModelHolder:
    """The model holder of ``settings.model``, with its first version loaded (raises if unusable)."""
    holder = ModelHolder(
        make_source(settings.model, settings.cache_dir, settings.tracking_uri),
        settings.poll_interval_s,
        load_timeout_s=settings.load_timeout_s,
        allow_interface_change=settings.allow_interface_change,
    )
    holder.load_initial()
    return holder


@dataclass(frozen=True)
class Service:
    """The service's parts: the whole ASGI app, and what a front answering ids.v1 itself needs
    (``recsys.serving.rsgi``): the same holder, metrics, limits and ids.v1 handler."""

    asgi: MetricsMiddleware
    holder: ModelHolder
    limits: RequestLimits
    ids_answer: Callable[[bytes, bytes], Awaitable[tuple[int, bytes, str, dict[str, str]]]]
    ids_now: Callable[[bytes, bytes], tuple[int, bytes, str, dict[str, str]]]  # the same answer on the calling thread
    offload_bytes: int  # ids.v1 bodies this large are answered off the event loop
    expected_auth: bytes | None  # the Authorization header a request must carry (None: no token)


def create_app(settings: ServeSettings, holder: ModelHolder | None = None, metrics: ServingMetrics | None = None) -> MetricsMiddleware:
    """The ASGI app (metrics, limits and the fast path around the FastAPI app); loads the model
    first unless a loaded ``holder`` is given."""
    return create_service(settings, holder, metrics).asgi


def create_service(settings: ServeSettings, holder: ModelHolder | None = None, metrics: ServingMetrics | None = None) -> Service:
    """The ``Service`` of ``settings`` (see ``create_app``)."""
    torch.set_num_threads(settings.torch_threads)
    metrics = metrics or ServingMetrics()
    holder = holder or make_holder(settings)
    metrics.watch(holder)
    current = holder.store
    metrics.set_model(current.version, current.manifest.method.name, current.manifest.dtype)
    models = request_models(settings)
    EmbeddingsRequest, ScoreRequest = models.embeddings, models.score

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder.start()
        yield
        holder.stop()
        log.info("stopped serving")

    app = FastAPI(title="recsys lookup service", version="1", lifespan=lifespan)

    def check_token(request: Request) -> None:
        if settings.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {settings.token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    async def authorised(request: Request) -> None:
        check_token(request)

    async def store() -> Store:
        return holder.store

    async def run(n: int, fn: Any, *args: Any) -> Any:
        """``fn(*args)``: inline when small, else in a worker thread (the event loop stays free)."""
        if n >= settings.offload_items:
            return await to_thread.run_sync(fn, *args)
        return fn(*args)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(_Invalid)
    async def invalid(request: Request, exc: _Invalid) -> JSONResponse:
        return JSONResponse({"detail": exc.errors}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()[:20]]
        return JSONResponse({"detail": errors}, status_code=422)

    embeddings_doc = {
        200: {
            "model": EmbeddingsResponse,
            "description": "JSON vectors, or raw float32 rows (see the description)",
            "content": {BINARY: {"schema": {"type": "string", "format": "binary"}}},
        },
        415: {"description": "body not sent as application/json"},
        422: {"description": "invalid request"},
    }

    @app.post(
        "/v1/embeddings",
        responses=embeddings_doc,
        description=("Vectors of `items` (feature, raw value) or of `entities` (feature -> raw value(s)). " + BINARY_DOC + " " + IDS_DOC),
    )
    async def embeddings(request: Request) -> Response:
        check_token(request)
        raw = await _body(request, binary_ok=True)
        accept = request.headers.get("accept", "").encode("latin-1")
        if _media(request.headers.get("content-type")) == IDS_V1:
            status, body, media_type, headers = await ids_answer(raw, accept)
            return Response(body, status_code=status, media_type=media_type, headers=headers)
        pairs = fast_items(raw)
        if pairs is None:
            body = _validate(EmbeddingsRequest, raw)
            if body.items is not None:
                pairs = [(i.feature, i.value) for i in body.items]
            else:
                s = holder.store
                found = await run(len(body.entities), s.entities, body.entities)
                metrics.items.labels(kind="entities").inc(len(found))
                entities = [{k: v.tolist() for k, v in e.items()} for e in found]
                return _json({"version": s.version, "dim": s.width, "entities": entities})
        _, body, media_type, headers = await pairs_answer(pairs, accept)  # a RequestError: 422 by its handler
        return Response(body, media_type=media_type, headers=headers)

    expected_auth = f"Bearer {settings.token}".encode() if settings.token is not None else b""
    binary_accept, json_accept = BINARY.encode(), b"application/json"
    offload_bytes = 8 * settings.offload_ids  # an ids.v1 body this large holds about offload_ids ids or more
    pairs_counter = metrics.items.labels(kind="pairs")

    def fast_items(raw: bytes) -> list[tuple[str, Any]] | None:
        """The ``(feature, value)`` pairs of a well-formed JSON ``items`` body (``fast_pairs``); ``None``
        for anything else, which the pydantic model then reads (and explains)."""
        try:
            return fast_pairs(json.loads(raw.decode()), settings.max_items, settings.max_string_length)
        except (ValueError, RecursionError):  # not JSON (not UTF-8, a BOM) or absurdly nested
            return None

    async def pairs_answer(pairs: list[tuple[str, Any]], accept: bytes) -> tuple[int, bytes, str, dict[str, str]]:
        """The vectors of ``pairs`` as JSON, or float32 rows when ``Accept`` names them; raises ``RequestError``."""
        s = holder.store
        vectors = await run(len(pairs), s.embeddings, pairs)
        pairs_counter.inc(len(pairs))
        return (200, *_vectors_body(s.version, vectors, BINARY.encode() in accept))

    async def items_fast(scope: dict[str, Any], raw: bytes) -> tuple[int, bytes, str, dict[str, str]] | None:
        """The ``embeddings`` route for the common case (see ``ItemsFastPath``); ``None``: let the route answer."""
        headers = dict(reversed(scope["headers"]))  # a repeated header: its first value, as the routes read it
        if settings.token is not None and not hmac.compare_digest(headers.get(b"authorization", b""), expected_auth):
            return None
        media = _media(headers.get(b"content-type"))
        if media == IDS_V1:
            return await ids_answer(raw, headers.get(b"accept", b""))
        pairs = fast_items(raw) if media in ("application/json", "") else None
        if pairs is None:
            return None
        try:
            return await pairs_answer(pairs, headers.get(b"accept", b""))
        except RequestError as exc:
            return 422, json.dumps({"detail": str(exc)}).encode(), "application/json", {}

    def ids_now(raw: bytes, accept: bytes) -> tuple[int, bytes, str, dict[str, str]]:
        """The answer to an ids.v1 body, on the calling thread: float32 rows (JSON when ``Accept`` names
        only JSON), 400 when malformed, 422 for an unknown feature. The compiled kernel (``Store.kernel``)
        answers the binary requests it can; any other (JSON answers, errors) goes the numpy way."""
        s = holder.store
        kernel = s.kernel
        if kernel is not None and (binary_accept in accept or json_accept not in accept):
            body = kernel.answer(raw, settings.max_items, settings.max_string_length)
            if body is not None:
                n = len(body) // (4 * s.width)
                pairs_counter.inc(n)
                return 200, body, BINARY, {"X-Model-Version": s.version, "X-Embedding-Dim": str(s.width), "X-Embedding-Count": str(n)}
        return ids_numpy(raw, accept)

    def ids_numpy(raw: bytes, accept: bytes) -> tuple[int, bytes, str, dict[str, str]]:
        try:
            blocks = decode_ids(raw, settings.max_items, settings.max_string_length)
        except FormatError as exc:
            return 400, json.dumps({"detail": str(exc)}).encode(), "application/json", {}
        s = holder.store
        n = sum(len(ids) for _, ids in blocks)
        try:
            vectors = s.lookup_blocks(blocks)
        except RequestError as exc:
            return 422, json.dumps({"detail": str(exc)}).encode(), "application/json", {}
        pairs_counter.inc(n)
        as_json = b"application/json" in accept and BINARY.encode() not in accept
        return (200, *_vectors_body(s.version, vectors, not as_json))

    async def ids_answer(raw: bytes, accept: bytes) -> tuple[int, bytes, str, dict[str, str]]:
        """``ids_now``, with a large body (at least ``offload_ids`` ids' worth) answered off the event
        loop (the compiled kernel and numpy let go of the GIL)."""
        if len(raw) < offload_bytes:
            return ids_now(raw, accept)
        return await to_thread.run_sync(ids_now, raw, accept)

    @app.post(
        "/v1/score",
        responses={200: {"model": ScoreResponse}, 415: {"description": "body not sent as application/json"}, 422: {"description": "invalid request"}},
    )
    async def score(request: Request) -> Response:
        """Click probabilities of full requests (dense + sparse raw values)."""
        check_token(request)
        body = _validate(ScoreRequest, await _body(request))
        s = holder.store
        scores = await run(len(body.requests), s.score, dump_rows(body.requests))
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
    def readyz() -> Response:
        """Readiness: a verified model is loaded and the service is not shutting down; ``reload``: how
        the last attempt to load a new version went (``state`` "failed" while one cannot be loaded)."""
        if not holder.ready:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return _json({"status": "ready", "version": holder.store.version, "reload": holder.status.as_dict()})  # ASCII: paths may not be UTF-8

    @app.get("/metrics", dependencies=[Depends(authorised)])
    def prometheus() -> Response:
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type=metrics.content_type)

    def openapi() -> dict[str, Any]:
        """The generated schema plus the request bodies the two POST endpoints parse themselves."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes, description=app.description)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for path, model in (("/v1/embeddings", EmbeddingsRequest), ("/v1/score", ScoreRequest)):
                js = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(js.pop("$defs", {}))
                components[model.__name__] = js
                content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
                if path == "/v1/embeddings":
                    content[IDS_V1] = {"schema": {"type": "string", "format": "binary", "description": IDS_DOC}}
                schema["paths"][path]["post"]["requestBody"] = {"required": True, "content": content}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.state.holder = holder
    app.state.metrics = metrics
    # outside FastAPI's own stack (error and telemetry middleware, routing): the fast path costs a few
    # plain calls; what it declines goes on to FastAPI
    limits = RequestLimits(ItemsFastPath(app, items_fast), settings.max_body_bytes, settings.body_timeout_s, settings.max_inflight)
    return Service(
        MetricsMiddleware(limits, metrics), holder, limits, ids_answer, ids_now, offload_bytes, expected_auth if settings.token is not None else None
    )


def configure_logging(level: str) -> None:
    """Timestamped lines at ``level`` on stderr; ``force``: importing fbgemm_gpu logs once, which
    installs Python's default handler (WARNING, no timestamps) and would make this a no-op."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
