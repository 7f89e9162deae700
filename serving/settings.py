"""Settings of the HTTP lookup service (``recsys serve`` flags; all limits configurable)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ServeSettings(BaseModel):
    """What to serve, where, and the request limits."""

    model_config = ConfigDict(extra="forbid")

    server: Literal["uvicorn", "uvicorn-lean", "granian", "granian-rsgi"] = Field(
        "uvicorn-lean",
        description="HTTP front: uvicorn (Python on uvloop + httptools), uvicorn-lean (the same, ids.v1 lookups answered in the protocol, "
        "one thread), granian (Rust, hyper; ASGI) or granian-rsgi (granian's RSGI: ids.v1 lookups skip the ASGI layers)",
    )
    model: str = Field(description="artifact folder (or a symlink to one), an artifact URI (s3://...), models:/NAME@ALIAS or models:/NAME/VERSION")
    host: str = Field("127.0.0.1", description="bind address; loopback unless told otherwise")
    port: int = Field(8000, ge=0, le=65535)
    token: str | None = Field(None, description="when set, /v1/* and /metrics need 'Authorization: Bearer <token>'")
    tracking_uri: str | None = Field(None, description="MLflow tracking/registry URI for models:/ sources")
    cache_dir: str | None = Field(None, description="where registry versions are downloaded")
    poll_interval_s: float = Field(30.0, ge=0, description="seconds between source polls for hot reload; 0 = never")
    load_timeout_s: float = Field(120.0, gt=0, description="a model load (fetch, verify, rebuild) taking longer is abandoned and refused")
    allow_interface_change: bool = Field(False, description="hot-swap to a version with other features or dimension (refused by default)")
    max_body_bytes: int = Field(4 << 20, ge=1024, description="larger request bodies get 413")
    max_items: int = Field(4096, ge=1, description="(feature, value) pairs per /v1/embeddings request")
    max_entities: int = Field(1024, ge=1, description="entities per /v1/embeddings request")
    max_requests: int = Field(1024, ge=1, description="rows per /v1/score request")
    max_values: int = Field(256, ge=1, description="values of one multi-valued feature in one row")
    max_string_length: int = Field(1024, ge=1, description="characters of one raw value or feature name")
    torch_threads: int = Field(1, ge=1, description="intra-op threads of each lookup (requests run in parallel)")
    offload_items: int = Field(512, ge=1, description="requests with at least this many items/rows run in a worker thread, smaller ones inline")
    offload_ids: int = Field(
        4096, ge=1, description="ids.v1 requests with at least this many ids run in a worker thread (whole-array work, under 1 µs an id)"
    )
    workers: int = Field(1, ge=1, description="server processes sharing the port, each with its own copy of the model")
    graceful_timeout_s: float = Field(10.0, ge=0, description="on shutdown, how long in-flight requests may finish")
    header_timeout_s: float = Field(10.0, gt=0, description="a request's headers must arrive within this (else 408 and close)")
    body_timeout_s: float = Field(10.0, gt=0, description="a request's body must arrive within this after its headers (else 408)")
    keep_alive_s: float = Field(5.0, gt=0, description="idle keep-alive connections are closed after this (granian: header_timeout_s)")
    max_connections: int = Field(
        1024, ge=1, description="uvicorn: 503 beyond this many open connections; granian: requests handled at once per worker"
    )
    max_inflight: int = Field(256, ge=1, description="POST requests served at once per process; more get 503 with Retry-After")
    gc_freeze: bool = Field(
        True,
        description="after the first model load, gc.freeze() the objects alive then (torch, the model, the app): "
        "Python's full collections otherwise scan them all, pausing requests ~200 ms each",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
