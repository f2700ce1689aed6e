"""What every lvmkit command shares: the consoles, the progress bar, and how errors reach the user.

Errors. Library code raises ``lvmkit.errors.LvmkitError`` (and subclasses) for problems the user can fix.
``LvmkitGroup`` -- the click group behind the ``lvmkit`` app -- catches them around *every* subcommand,
including command groups other modules add, prints the message in red on stderr and exits with status 2.
Anything else is a bug and keeps its traceback. Commands therefore need no try/except of their own:

    @app.command()
    def frobnicate(bank: Path) -> None:
        VectorBank.open(bank)   # a missing bank prints "error: no bank at ..." and exits 2

Progress. ``make_progress()`` returns a rich ``Progress`` with a rate column and an ETA; long commands
create one at the edge and hand the library a plain callback (the library never imports rich).
"""

from __future__ import annotations

import os
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from typer.core import TyperGroup

from lvmkit.errors import LvmkitError

# Piped into a file or a log (no terminal, no $COLUMNS), rich would cut tables to 80 columns and elide the
# numbers; a log is read in an editor, so lay results out 160 wide there.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(width=_WIDTH)  # results: tables, summaries
err_console = Console(stderr=True)  # errors and warnings

EXIT_USER_ERROR = 2  # an LvmkitError: bad input, missing or incompatible artifact, bad config value


def print_error(message: str) -> None:
    """One red line on stderr (the message is printed literally: brackets in paths are not markup)."""
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


class LvmkitGroup(TyperGroup):
    """The root click group: turns an ``LvmkitError`` raised by any subcommand into one message + exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LvmkitError as e:
            print_error(str(e))
            raise typer.Exit(EXIT_USER_ERROR) from None


def make_app(**kwargs) -> typer.Typer:
    """A Typer app for lvmkit commands (no shell-completion options, help on -h too)."""
    kwargs.setdefault("no_args_is_help", True)
    kwargs.setdefault("add_completion", False)
    kwargs.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
    kwargs.setdefault("pretty_exceptions_show_locals", False)
    return typer.Typer(**kwargs)


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``812 chunks/s`` (the unit comes from the task's ``unit`` field)."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "it")
        speed = task.finished_speed or task.speed
        if speed is None and task.elapsed:  # too few samples for rich's moving estimate: overall average
            speed = task.completed / task.elapsed
        if speed is None:
            return Text(f"-- {unit}/s", style="progress.data.speed")
        return Text(
            f"{speed:,.0f} {unit}/s" if speed >= 10 else f"{speed:.2f} {unit}/s", style="progress.data.speed"
        )


def make_progress(transient: bool = False) -> Progress:
    """The progress bar every long command uses: description, bar, done/total, rate, elapsed, ETA.

    Add tasks with a ``unit`` field for the rate column:

        with make_progress() as progress:
            task = progress.add_task("encoding", total=n, unit="chunks")
            progress.update(task, advance=64)
    """
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
    )


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


def human_duration(seconds: float) -> str:
    """75.2 -> '1m15s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
