"""``lvmkit serve BANK --run RUN``: the HTTP API and the web page (needs the extra ``lvmkit[serve]``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from lvmkit.cli.common import console
from lvmkit.errors import ConfigError

KEEP_ALIVE_S = 30  # seconds an idle client connection stays open (uvicorn's default is 5)


BankArg = Annotated[Path, typer.Argument(help="A bank directory (from `lvmkit ingest`).", show_default=False)]
RunOpt = Annotated[
    str | None,
    typer.Option(
        "--run",
        help="The run that answers /v1/next: a run directory, a checkpoint, a run name under --runs-dir, or "
        "baseline:NAME (copy_last, mean_ctx, exp_weighted). Default: baseline:copy_last.",
    ),
]
RunsDirOpt = Annotated[
    Path | None,
    typer.Option(help="Directory of runs shown by /v1/runs and the dashboard (default: the --run's parent)."),
]
HostOpt = Annotated[
    str, typer.Option(help="Address to bind. Anything but loopback requires --token / LVMKIT_TOKEN.")
]
PortOpt = Annotated[int, typer.Option(help="Port to bind (0: any free port, printed at start).")]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        help="Bearer token every /v1 call but health must send (default: $LVMKIT_TOKEN).",
        show_default=False,
    ),
]
MaxContextOpt = Annotated[int, typer.Option(help="Most context chunks one /v1/next request may send.")]
MaxBodyOpt = Annotated[int, typer.Option(help="Largest request body in bytes.")]
NprobeOpt = Annotated[
    int | None, typer.Option(help="ivf: clusters searched (hnsw: efSearch); default: the index's own.")
]
BackendOpt = Annotated[
    str | None,
    typer.Option(help="Query encoder backend (default: the bank's own; onnx-int8 is faster on CPU)."),
]
DeviceOpt = Annotated[str, typer.Option(help="Encoder device: cpu, cuda, mps, auto.")]
RoutingOpt = Annotated[
    Path | None,
    typer.Option(
        help="Routing file (YAML) instead of --run: its runs, a default, routes by number of context chunks, "
        "a canary share with a P95 guardrail, shadow runs. See the README's example.",
        show_default=False,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a routing field, e.g. --set canary.share=0.1 (repeatable)."),
]
BatchSearchOpt = Annotated[
    bool,
    typer.Option(
        help="Coalesce concurrent requests' searches into one FAISS call (a micro-batcher; see the README's "
        "load table for when it pays)."
    ),
]
LogRequestsOpt = Annotated[
    Path | None,
    typer.Option(
        help="Log every request and answer (and shadow answers) as JSON Lines under this directory, for "
        "`lvmkit replay`. Off by default; nothing else (no address, header or token) is written.",
        show_default=False,
    ),
]


def serve(
    bank: BankArg,
    run: RunOpt = None,
    runs_dir: RunsDirOpt = None,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    token: TokenOpt = None,
    max_context: MaxContextOpt = 64,
    max_body: MaxBodyOpt = 1 << 20,
    nprobe: NprobeOpt = None,
    backend: BackendOpt = None,
    device: DeviceOpt = "cpu",
    routing: RoutingOpt = None,
    set_: SetOpt = None,
    batch_search: BatchSearchOpt = False,
    log_requests: LogRequestsOpt = None,
) -> None:
    """Serve BANK over HTTP: search, next-chunk prediction beside copy_last, and a dashboard of training runs.

    The page is at http://HOST:PORT/ and the API's documentation at /docs. By default the server listens on
    127.0.0.1 only; --host 0.0.0.0 exposes it and then needs a token. It writes no files unless --log-requests is given.

    Example: lvmkit serve quickstart_out/bank --run quickstart_out/runs/gru

    Several runs: lvmkit serve quickstart_out/bank --routing routing.yaml --log-requests logs/  (each /v1/next
    response names the run that answered; /v1/info shows the routing, the canary's state and per-run P50/P95)
    """
    uvicorn, create_app = _import_serve_extra()
    from lvmkit.serve.limits import check_exposure
    from lvmkit.serve.service import Service

    token = token or os.environ.get("LVMKIT_TOKEN") or None
    check_exposure(host, token)
    limits = _limits(max_context, max_body)
    routing_cfg = _load_routing(routing, set_)
    what = f"the runs of {routing}" if routing else run or "baseline:copy_last"
    with console.status(f"opening {bank} and loading {what}"):
        service = Service.open(
            bank,
            run,
            runs_dir,
            backend=backend,
            device=device,
            nprobe=nprobe,
            limits=limits,
            routing=routing_cfg,
            log_requests=log_requests,
            batch_search=batch_search,
        )
    _print_banner(service, bank, routing, routing_cfg)
    _run_uvicorn(uvicorn, create_app(service, token=token), host, port, token)


def _import_serve_extra():
    """uvicorn and the app factory, or a ConfigError naming the extra to install."""
    try:
        import uvicorn

        from lvmkit.serve.app import create_app
    except ImportError as e:
        raise ConfigError(f"lvmkit serve needs the serve extra: pip install 'lvmkit[serve]' ({e})") from None
    return uvicorn, create_app


def _limits(max_context: int, max_body: int):
    """--max-context / --max-body as the service's Limits (a bad value: a ConfigError naming both options)."""
    from lvmkit.serve.schemas import Limits

    try:
        return Limits(max_context_chunks=max_context, max_body_bytes=max_body)
    except ValueError as e:
        raise ConfigError(f"--max-context / --max-body: {e}") from None


def _load_routing(routing: Path | None, set_: list[str] | None):
    """The routing file with its --set overrides applied (None without --routing; --set alone is an error)."""
    if routing is not None:
        from lvmkit.serve.routing import load_routing

        return load_routing(routing, set_ or [])
    if set_:
        raise ConfigError("--set overrides routing fields; it needs --routing FILE")
    return None


def _print_banner(service, bank: Path, routing: Path | None, routing_cfg) -> None:
    """The bank, the runs answering /v1/next, the routing, the request log and the runs directory."""
    names = ", ".join(service.models.names())
    console.print(
        f"bank {bank} ({len(service.bank):,} chunks, {service.bank.encoder.describe()}); /v1/next answered by {names}"
    )
    if routing_cfg is not None:
        console.print(f"routing {routing}: {_describe_routing(routing_cfg)}")
    if service.request_log is not None:
        console.print(f"logging requests to {service.request_log.dir}")
    if service.runs_dir:
        console.print(f"runs: {service.runs_dir}")


def _run_uvicorn(uvicorn, app, host: str, port: int, token: str | None) -> None:
    """Serve ``app`` until interrupted, printing the bound address once uvicorn is up."""
    # keep-alive 30 s, not uvicorn's 5: under overload a pooled client connection that sat idle past the server's
    # timeout was closed just as a request was sent on it (bench_serve: 1 ReadError in 300 at 32 clients)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, timeout_keep_alive=KEEP_ALIVE_S
    )
    server = uvicorn.Server(config)
    _announce_when_started(server, host, token)
    server.run()


def _announce_when_started(server, host: str, token: str | None) -> None:
    """Print the address once uvicorn has bound it (the port may have been 0: any free port)."""
    original = server.startup

    async def startup(sockets=None):
        await original(sockets=sockets)
        for s in server.servers:
            for sock in s.sockets:
                port = sock.getsockname()[1]
                shown = f"[{host}]" if ":" in host else host
                console.print(f"serving on http://{shown}:{port}/  (API docs: /docs)", highlight=False)
                if token:
                    console.print("every /v1 call but /v1/health needs 'Authorization: Bearer <token>'")
                return

    server.startup = startup


def _describe_routing(cfg) -> str:
    parts = [f"default {cfg.default}"]
    parts += [r.describe() for r in cfg.routes]
    if cfg.canary is not None:
        parts.append(f"canary {cfg.canary.run} at {cfg.canary.share:.1%}")
        if cfg.guardrail is not None:
            parts.append(
                f"guardrail P95 <= {cfg.guardrail.p95_factor} x default after {cfg.guardrail.min_samples}"
            )
    if cfg.shadows:
        parts.append("shadows " + ", ".join(cfg.shadows))
    return "; ".join(parts)
