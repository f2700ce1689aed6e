"""The FastAPI app: thin routes over ``Service`` (service.py) and the runs readers (runs.py).

    app = create_app(Service.open("banks/enwiki", run="runs/gru"), token=None)

Routes (``/docs`` shows them with their schemas; Swagger UI is served from the ``fastapi-offline`` package's
files, so the page works without internet, and falls back to a plain list when that package is absent):

    GET  /                     the web page (static/: playground + runs dashboard)
    GET  /v1/health            liveness (never needs the token)
    GET  /v1/info              bank, encoder and model provenance, index, protocol, limits
    POST /v1/search            {text, k} -> the k nearest chunks
    POST /v1/next              {context | paragraph, k} -> predicted next chunks beside copy_last, timings
    GET  /v1/runs              every run under --runs-dir
    GET  /v1/runs/{name}       its status, history, gates and final metrics
    GET  /v1/runs/{name}/report  its HTML report (rendered in memory)

Errors: a user-fixable problem is a 4xx with ``{"detail": message}``: LvmkitError 400, RequestError and a body
that fails validation 422, NotFoundError 404, ProvenanceError and ArtifactError (a damaged or half-written file
behind the answer, e.g. a bank row no unit vector can score: the message names the file and the fix) 409, a body
over the limit 413, a missing or wrong token 401. Which run answers ``/v1/next`` is decided by ``service.models`` alone (a ``Predictors``).
"""

from __future__ import annotations

import hmac
import pathlib
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from lvmkit import __version__
from lvmkit.errors import ArtifactError, LvmkitError, NotFoundError, ProvenanceError, RequestError
from lvmkit.serve import runs as runs_lib
from lvmkit.serve.limits import BodyLimit
from lvmkit.serve.schemas import (
    ErrorOut,
    Health,
    Info,
    NextRequest,
    NextResponse,
    RunDetail,
    RunList,
    SearchRequest,
    SearchResponse,
)
from lvmkit.serve.service import Service

STATIC = pathlib.Path(__file__).parent / "static"
ERROR_STATUS = ((RequestError, 422), (NotFoundError, 404), (ArtifactError, 409), (ProvenanceError, 409))
ERRORS = {c: {"model": ErrorOut} for c in (400, 401, 404, 409, 413, 422)}
RUN_NAME = Path(
    ...,
    pattern=runs_lib.RUN_NAME.pattern,
    max_length=128,
    description="a run directory's name under --runs-dir",
)
HTML_PAGE = {"description": "an HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}


def create_app(service: Service, token: str | None = None) -> FastAPI:
    """The app over ``service``; with ``token`` every /v1 route but health needs ``Authorization: Bearer``."""
    app = FastAPI(
        title="lvmkit",
        version=__version__,
        description="Next-chunk prediction and search over a vector bank; training runs. The page is at /.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.auth = "bearer token" if token else "none (loopback only)"
    app.add_middleware(BodyLimit, max_bytes=service.limits.max_body_bytes)
    _error_handlers(app)
    app.include_router(_public_routes(service))
    # the bearer check (and its security scheme in the OpenAPI schema) only exists when a token is set
    app.include_router(_api_routes(service), dependencies=[Depends(_token_check(token))] if token else [])
    _pages(app)
    return app


def _token_check(token: str):
    bearer = HTTPBearer(auto_error=False, description="lvmkit serve --token / LVMKIT_TOKEN")

    def check(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = cred.credentials if cred is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong token: send 'Authorization: Bearer <token>'")

    return check


def _public_routes(svc: Service) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.get("/health", response_model=Health)
    def health() -> Health:
        """Liveness: the bank is open and the models are loaded."""
        return svc.health()

    return r


def _api_routes(svc: Service) -> APIRouter:
    r = APIRouter(prefix="/v1", responses=ERRORS)

    @r.get("/info", response_model=Info)
    def info(request: Request) -> Info:
        """Bank, encoder and model provenance, index type and nprobe, the search protocol, the limits."""
        return svc.info(auth=request.app.state.auth)

    @r.post("/search", response_model=SearchResponse)
    def search(req: SearchRequest, background: BackgroundTasks) -> SearchResponse:
        """The k nearest chunks of the whole bank to a text, encoded with the bank's encoder."""
        return svc.search(req, defer=background.add_task)

    @r.post("/next", response_model=NextResponse)
    def next_chunks(req: NextRequest, background: BackgroundTasks) -> NextResponse:
        """Predicted next chunks after a context (or a paragraph split by the bank's chunker), beside what
        copy_last returns, with the time of each stage."""
        return svc.next(req, defer=background.add_task)  # request log and shadows run after the response

    @r.get("/runs", response_model=RunList)
    def runs() -> RunList:
        """Every training run under the runs directory: state, epoch, best and latest metrics."""
        return RunList(
            runs_dir=str(svc.runs_dir) if svc.runs_dir else None,
            runs=runs_lib.list_run_summaries(svc.runs_dir),
        )

    @r.get("/runs/{name}", response_model=RunDetail)
    def run(name: str = RUN_NAME) -> RunDetail:
        """One run: status, history rows (training curves), gates, final metrics beside the baselines."""
        return runs_lib.run_detail(svc.runs_dir, name)

    @r.get("/runs/{name}/report", response_model=None, responses={200: HTML_PAGE})
    def report(name: str = RUN_NAME) -> HTMLResponse:
        """The run's self-contained HTML report (as `lvmkit report RUN` writes it), rendered in memory."""
        return HTMLResponse(runs_lib.run_report_html(svc.runs_dir, name))

    return r


def _pages(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    swagger = _swagger_dir()
    if swagger is not None:
        app.mount("/docs-static", StaticFiles(directory=swagger), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if swagger is None:
            return FileResponse(STATIC / "docs.html")
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="lvmkit API",
            swagger_js_url="/docs-static/swagger-ui-bundle.js",
            swagger_css_url="/docs-static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )


def _swagger_dir() -> pathlib.Path | None:
    """Swagger UI's files from the fastapi-offline package (no CDN), or None when it is not installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    d = pathlib.Path(fastapi_offline.__file__).parent / "static"
    return d if (d / "swagger-ui-bundle.js").is_file() else None


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LvmkitError)
    async def lvmkit_error(request: Request, exc: LvmkitError) -> JSONResponse:
        status = next((code for cls, code in ERROR_STATUS if isinstance(exc, cls)), 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_validation(exc.errors())}, status_code=422)


def describe_validation(errors: list[dict[str, Any]]) -> str:
    """Pydantic's errors as one line: ``body.k: Input should be less than or equal to 1000; ...``."""
    parts = []
    for e in errors:
        where = ".".join(str(p) for p in e.get("loc", ()))
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"
