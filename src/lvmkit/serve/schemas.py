"""Request and response models of the HTTP API, with the limits every request is held to.

Static limits (the same for every server) are pydantic constraints, so they appear in the OpenAPI schema:
``k`` in 1..MAX_K, a text of at most MAX_TEXT_CHARS characters, at most MAX_CONTEXT_CEILING context texts.
Configurable limits (``Limits``: context chunks per request, request body bytes) are checked by the server
and shown by ``GET /v1/info``. Whitespace-only text counts as empty.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_K = 1000
MAX_TEXT_CHARS = 100_000  # one text field (a paragraph, a query); the body limit caps the total anyway
MAX_CONTEXT_CEILING = 1000  # schema ceiling for a context list; the server's own limit is usually lower
MAX_REQUEST_ID_CHARS = 128


class Limits(BaseModel):
    """What one request may ask for (``lvmkit serve --max-context ...``; shown by /v1/info)."""

    model_config = ConfigDict(extra="forbid")

    max_k: int = Field(MAX_K, ge=1, le=MAX_K)
    max_context_chunks: int = Field(64, ge=1, le=MAX_CONTEXT_CEILING)
    max_text_chars: int = MAX_TEXT_CHARS
    max_body_bytes: int = Field(1 << 20, ge=1024)


def _not_blank(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"{what} is empty (or only whitespace)")
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Request):
    text: str = Field(
        ...,
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="Query text (encoded by the bank's encoder).",
    )
    k: int = Field(10, ge=1, le=MAX_K, description="Number of nearest chunks to return.")

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _not_blank(v, "text")


class NextRequest(_Request):
    """Give ``context`` (the previous chunks, oldest first) or ``paragraph`` (split by the bank's chunker)."""

    context: list[str] | None = Field(
        None,
        min_length=1,
        max_length=MAX_CONTEXT_CEILING,
        description="Previous chunks, oldest first. The server's limit on their number is in /v1/info.",
    )
    paragraph: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="Text split into chunks by the bank's chunker.",
    )
    k: int = Field(10, ge=1, le=MAX_K, description="Number of predicted next chunks to return.")
    exclude_context: bool = Field(
        True, description="Leave bank chunks whose text equals a context chunk out of the results."
    )
    request_id: str | None = Field(
        None,
        max_length=MAX_REQUEST_ID_CHARS,
        description="Client's id for the request (routing: the same id is always answered by the same run).",
    )

    @field_validator("context")
    @classmethod
    def _context(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            for i, text in enumerate(v):
                if len(text) > MAX_TEXT_CHARS:
                    raise ValueError(f"context[{i}] has {len(text)} characters; at most {MAX_TEXT_CHARS}")
                _not_blank(text, f"context[{i}]")
        return v

    @field_validator("paragraph")
    @classmethod
    def _paragraph(cls, v: str | None) -> str | None:
        return None if v is None else _not_blank(v, "paragraph")

    @model_validator(mode="after")
    def _one_of(self) -> NextRequest:
        if (self.context is None) == (self.paragraph is None):
            raise ValueError("give exactly one of 'context' (a list of chunk texts) or 'paragraph' (a text)")
        return self


# ------------------------------------------------------------------------------------------- responses
class Hit(BaseModel):
    rank: int
    chunk_id: int
    score: float
    article_id: str
    title: str
    chunk_index: int
    text: str
    label: str | None = None


class SearchResponse(BaseModel):
    k: int
    hits: list[Hit]
    timings_ms: dict[str, float] = Field(description="encode, search")


class NextResponse(BaseModel):
    run: str = Field(description="The run that answered (its directory name, or baseline:NAME).")
    request_id: str
    context: list[str] = Field(description="The context chunks, after splitting a paragraph.")
    context_used: int = Field(description="How many of the last context chunks the model reads (its ctx).")
    excluded_chunk_ids: list[int] = Field(description="Bank chunks left out because they are context chunks.")
    predicted: list[Hit]
    copy_last: list[Hit] = Field(description="The nearest chunks to the last context chunk (the baseline).")
    timings_ms: dict[str, float] = Field(description="encode, predict, search, total")


class Health(BaseModel):
    status: str
    bank_chunks: int
    runs: list[str]


class Info(BaseModel):
    bank: dict[str, Any]
    encoder: dict[str, Any]
    query_encoder: dict[str, Any]
    models: list[dict[str, Any]]
    routing: dict[str, Any] | None = Field(
        None,
        description="--routing: the config, the canary's state, rolling P50/P95 per run, shadow agreement",
    )
    request_log: str | None = Field(None, description="--log-requests: the directory requests are logged to")
    index: dict[str, Any]
    protocol: dict[str, Any]
    limits: Limits
    runs_dir: str | None
    auth: str


class RunSummaryOut(BaseModel):
    name: str
    state: str
    alive: bool
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    best_metric: str | None = None
    best_value: float | None = None
    best_epoch: int | None = None
    latest: dict[str, Any] = Field(default_factory=dict)
    windows_per_s: float | None = None
    eta_s: float | None = None
    message: str | None = None
    has_report: bool = Field(description="GET /v1/runs/{name}/report renders its HTML report.")


class RunList(BaseModel):
    runs_dir: str | None
    runs: list[RunSummaryOut]


class RunDetail(BaseModel):
    summary: RunSummaryOut
    epochs: list[dict[str, Any]] = Field(description="history.jsonl epoch rows")
    steps: list[dict[str, Any]] = Field(description="history.jsonl step rows (at most 500, evenly thinned)")
    gates: list[dict[str, Any]] = Field(description="the config's epoch gates re-checked on the history")
    eval_gates: dict[str, Any] | None = None
    results: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="final metrics per model and baseline (metrics.json)"
    )
    primary: str | None = None
    config: dict[str, Any] | None = None


class ErrorOut(BaseModel):
    detail: str
