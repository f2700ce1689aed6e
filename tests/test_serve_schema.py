"""Property-based run of the HTTP API against its own OpenAPI schema (schemathesis, in process, no socket).

Every operation gets generated requests, valid and invalid ones; a 5xx, an undocumented status code, a
response that does not match its schema, or an invalid request that is accepted fails the test. The example
count is small and the generation derandomized, so the run is fast and the same every time.
"""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from serve_env import make_corpus_bank, train_tiny_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory, one_thread):
    from lvmkit.serve.app import create_app
    from lvmkit.serve.schemas import Limits
    from lvmkit.serve.service import Service

    tmp = tmp_path_factory.mktemp("schema")
    bank = make_corpus_bank(tmp, n_articles=12, sentences=6)
    run = train_tiny_run(bank, tmp / "runs" / "gru", epochs=1)
    svc = Service.open(
        bank.path, str(run), limits=Limits(max_context_chunks=8)
    )  # 1 MiB bodies: 413 is tested apart
    return lambda token: schemathesis.openapi.from_asgi("/openapi.json", create_app(svc, token=token))


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
TOKEN = "s3cret-token"
RUNS = [("positive", None), ("negative", None), ("positive", TOKEN), ("negative", TOKEN)]


def operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize(("mode", "token"), RUNS, ids=[f"{m}-{'token' if t else 'open'}" for m, t in RUNS])
def test_api_conforms_to_its_schema(api_schema, mode, token):
    """Each operation, valid (positive) or invalid (negative) generated requests: never a 5xx, only documented
    statuses, bodies matching the schema, invalid input refused with a 4xx. With a token the schema declares
    bearer auth, and the negative run also sends requests without it (they must be refused)."""
    ops = operations(api_schema(token))
    headers = {"Authorization": f"Bearer {token}"} if token else None
    assert {op.path for op in ops} >= {"/v1/search", "/v1/next", "/v1/info", "/v1/runs/{name}"}
    for op in ops:
        if mode == "negative" and not (len(op.body) or len(op.path_parameters)):
            continue  # nothing to make invalid (GET /v1/health, /v1/info, /v1/runs)
        strategy = op.as_strategy(generation_mode=schemathesis.GenerationMode(mode))

        @given(case=strategy)
        @settings(
            max_examples=15,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            case.call_and_validate(checks=CHECKS, headers=headers)

        check()
