"""The ``lvmkit`` command line (entry point ``lvmkit.cli.main:app``; also ``python -m lvmkit.cli.main``).

Adding commands: write them in a module under ``lvmkit/cli/`` (a function per command, or a Typer made
with ``lvmkit.cli.common.make_app`` for a group like ``lvmkit index build``), then register them in the
block below with one line each. Keep heavy imports (torch, faiss, encoders) inside the command bodies so
``lvmkit --help`` stays fast. Raise ``lvmkit.errors.LvmkitError`` for user errors: the root group prints
them as one red line and exits with status 2 (see ``lvmkit.cli.common``).
"""

from __future__ import annotations

from lvmkit.cli import align as align_cli
from lvmkit.cli import bank
from lvmkit.cli import diagnose as diagnose_cli
from lvmkit.cli import eval as eval_cli
from lvmkit.cli import lanes as lanes_cli
from lvmkit.cli import pairs as pairs_cli
from lvmkit.cli import quickstart as quickstart_cli
from lvmkit.cli import replay as replay_cli
from lvmkit.cli import report as report_cli
from lvmkit.cli import rerank as rerank_cli
from lvmkit.cli import runs as runs_cli
from lvmkit.cli import serve as serve_cli
from lvmkit.cli import train as train_cli
from lvmkit.cli.common import LvmkitGroup, make_app

app = make_app(
    cls=LvmkitGroup,
    help="lvmkit: vector-native language modeling (next-chunk embedding prediction), evaluated honestly.",
)

# ---- commands: one line each ------------------------------------------------------------------------
app.command("quickstart")(quickstart_cli.quickstart)
app.command("ingest")(bank.ingest)
app.add_typer(bank.index_app, name="index")
app.command("search")(bank.search)
app.add_typer(bank.bank_app, name="bank")
app.command("train")(train_cli.train)
app.add_typer(runs_cli.runs_app, name="runs")
app.command("eval")(eval_cli.eval_command)
app.add_typer(diagnose_cli.diagnose_app, name="diagnose")
app.command("report")(report_cli.report)
app.command("pairs")(pairs_cli.pairs)
app.add_typer(lanes_cli.lanes_app, name="lanes")
app.command("align")(align_cli.align)
app.add_typer(rerank_cli.rerank_app, name="rerank")
app.command("serve")(serve_cli.serve)
app.command("replay")(replay_cli.replay)
# ------------------------------------------------------------------------------------------------------


if __name__ == "__main__":
    app()
