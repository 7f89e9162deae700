"""Request and response bodies of the HTTP API, with the limits of ``ServeSettings``.

Validation here is structural (types, sizes, finite numbers); feature names and single- vs
multi-valued fields are checked against the served model by ``recsys.serving.encode``.
"""

from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, StringConstraints, model_validator

from recsys.serving.settings import ServeSettings


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingsResponse(_Body):
    version: str = Field(description="the served model version")
    dim: int = Field(description="vector width")
    vectors: list[list[float]] | None = Field(None, description="one vector per item, in order")
    entities: list[dict[str, list[float]]] | None = Field(None, description="per entity, feature -> vector")


class ScoreResponse(_Body):
    version: str
    scores: list[float] = Field(description="click probability of each request, in order")


@dataclass(frozen=True)
class RequestModels:
    embeddings: type[BaseModel]
    score: type[BaseModel]


def request_models(s: ServeSettings) -> RequestModels:
    """The request bodies with this service's limits (shown in the OpenAPI docs)."""
    name = Annotated[StrictStr, StringConstraints(min_length=1, max_length=s.max_string_length)]
    raw = Union[Annotated[StrictStr, StringConstraints(max_length=s.max_string_length)], StrictInt, None]
    number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
    values = Union[
        raw,
        Annotated[list[raw], Field(max_length=s.max_values)],
        Annotated[dict[name, number], Field(max_length=s.max_values)],
    ]
    features = Annotated[dict[name, values], Field(max_length=s.max_values)]

    class Item(_Body):
        """One (feature, raw value) pair."""

        feature: name
        value: raw = Field(description="raw categorical value (string or integer); null or '' = missing")

    class EmbeddingsRequest(_Body):
        """Either ``items`` (vectors of (feature, value) pairs) or ``entities`` (several features each)."""

        items: Annotated[list[Item], Field(max_length=s.max_items)] | None = None
        entities: Annotated[list[features], Field(max_length=s.max_entities)] | None = None

        @model_validator(mode="after")
        def _one_of(self) -> "EmbeddingsRequest":
            if (self.items is None) == (self.entities is None):
                raise ValueError("give exactly one of 'items' or 'entities'")
            return self

    class ScoreRow(_Body):
        """One request: raw dense numbers (transformed like the data) and raw sparse values."""

        dense: Annotated[dict[name, number | None], Field(max_length=s.max_values)] = {}
        sparse: features = {}

    class ScoreRequest(_Body):
        requests: Annotated[list[ScoreRow], Field(min_length=1, max_length=s.max_requests)]

    return RequestModels(embeddings=EmbeddingsRequest, score=ScoreRequest)


def dump_rows(rows: list[Any]) -> list[dict[str, Any]]:
    """Validated request rows as plain dicts for the lookup layer."""
    return [r.model_dump() for r in rows]
