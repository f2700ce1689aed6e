"""Gates and triage: when a run stops for a reason, say what happened and what to try next, in order.

A gate is a promise about a metric at a given epoch (``{epoch: 2, metric: val_hit@5, min: 0.10}``); it is
checked after that epoch's validation with ``lvmkit.eval.gates.check_gates``. A failed gate or a NaN/inf
loss stops the run cleanly (checkpoint saved, ``status.json`` updated) and writes ``RUN/triage.md``: the
evidence (the gate table or the offending step's loss parts) followed by an ordered list of fixes, each with
the ``--set`` overrides to try. The order is the one that has paid off most often, cheapest first.
A two-tower run whose separation margin collapses is aborted by its task (``write_abort_triage``): the fixes
then rewrite its hard-negative curriculum (a narrower window, fewer negatives) before touching the temperature.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import Any

from lvmkit.artifacts import write_text
from lvmkit.train.config import GateConfig, RunConfig
from lvmkit.train.mining import Schedule, parse_schedule

TRIAGE_FILE = "triage.md"


def is_contrastive(cfg: RunConfig) -> bool:
    """A run whose loss has a contrastive (InfoNCE) term."""
    if cfg.task == "twotower":
        return True
    return bool(set(cfg.loss) & {"infonce", "lambda_con"})


def gate_rules(gates: list[GateConfig], epoch: int) -> list[dict[str, Any]]:
    """The gates due after ``epoch``, as rules for ``lvmkit.eval.gates.check_gates``."""
    return [g.model_dump(exclude_none=True) for g in gates if g.epoch == epoch]


# ----------------------------------------------------------------------------------------- fixes
def gate_fixes(cfg: RunConfig) -> list[tuple[str, str]]:
    """Ordered (what to try, why) for a failed quality gate, adapted to the run's loss."""
    d, o, lr = cfg.data, cfg.optim, cfg.optim.lr
    if cfg.task == "twotower":
        return twotower_fixes(cfg)
    if is_contrastive(cfg):
        tau = cfg.loss.get("tau", 0.07)
        queue = int(cfg.loss.get("queue", 0) or 0)
        if "lambda_con" in cfg.loss:
            lam_con, lam_ar = cfg.loss.get("lambda_con", 0.1), cfg.loss.get("lambda_ar", 1.0)
            mix = f"`--set loss.lambda_con={_fmt(lam_con * 2)} --set loss.lambda_ar={_fmt(lam_ar / 2)}`"
        else:
            mix = f"`--set loss.infonce={_fmt(cfg.loss.get('infonce', 0.03) * 3)}`"
        return [
            (
                "Temperature sweep: `--set loss.tau=0.05`, then `--set loss.tau=0.10`",
                f"tau={tau} sets how sharply InfoNCE separates the positive; it is the cheapest knob and the "
                "most common cause of a contrastive run that will not move.",
            ),
            (
                f"Raise the contrastive weight / lower the regression weight: {mix}",
                "the regression term pulls predictions toward the average next chunk (close to copying the last "
                "context vector); more contrastive weight pushes them to discriminate.",
            ),
            (
                f"More negatives: `--set data.batch_size={d.batch_size * 2}` or "
                f"`--set loss.queue={max(4096, queue * 2)}`",
                "with few negatives the task is too easy and the ranking over the full bank does not improve.",
            ),
            (
                "Check the projection head: compare val metrics with and without it, and look at the spread of "
                "its outputs (`lvmkit diagnose model RUN`)",
                "a collapsed head (all outputs nearly equal) makes InfoNCE trivially flat.",
            ),
            (
                "Stricter article mixing: `--set data.max_per_article=1`",
                "several windows from one article in a batch give near-duplicate negatives (masked or not).",
            ),
        ]
    delta = cfg.model.delta
    return [
        (
            f"Learning rate: try `--set optim.lr={_fmt(lr / 3)}` and `--set optim.lr={_fmt(lr * 3)}`"
            + (f" (warm-up is {o.warmup_steps} steps)" if o.warmup_steps else ""),
            "a flat validation curve is usually a step size that is too small (no progress) or too large "
            "(noise around the mean vector).",
        ),
        (
            f"Delta mode: `--set model.delta={'false' if delta else 'true'}`",
            "predicting a residual on the last context vector starts at the copy-last baseline; compare both.",
        ),
        (
            "Loss mix: `--set loss={cos: 1.0, mse: 0.5}` or add a small contrastive term "
            "`--set loss={cos: 1.0, infonce: 0.03, tau: 0.07}`",
            "pure regression losses favour the average next chunk; a ranking term rewards retrieval directly.",
        ),
        (
            f"More data and context: `--set data.ctx={d.ctx * 2}`"
            + (" and `--set data.max_train_windows=null`" if d.max_train_windows else "")
            + ", or ingest more articles into the bank",
            "small models on a few thousand windows mostly learn to copy; more windows and a longer context are "
            "what gives them something else to learn.",
        ),
    ]


def nan_fixes(cfg: RunConfig) -> list[tuple[str, str]]:
    """Ordered (what to try, why) for a NaN or infinite loss."""
    o = cfg.optim
    fixes = [
        (
            f"Lower the learning rate: `--set optim.lr={_fmt(o.lr / 10)}` and keep a warm-up "
            f"(`--set optim.warmup_steps={max(o.warmup_steps, 100)}`)",
            "a diverging step is the usual source of non-finite losses.",
        ),
        (
            "Clip gradients: `--set optim.clip_norm=1.0`"
            if o.clip_norm is None
            else f"Clip gradients harder: `--set optim.clip_norm={_fmt(o.clip_norm / 4)}`",
            "one outlier batch can blow the weights up in a single step.",
        ),
    ]
    if is_contrastive(cfg):
        fixes.append(
            (
                "Raise the InfoNCE temperature: `--set loss.tau=0.1`",
                "logits scale as 1/tau; a small tau overflows in low precision.",
            )
        )
    if o.amp:
        fixes.append(("Disable mixed precision: `--set optim.amp=false`", "bfloat16 has few mantissa bits."))
    fixes.append(
        (
            "Check the bank for non-finite vectors (`lvmkit diagnose bank BANK`)",
            "a NaN row in the bank gives a NaN loss whenever it lands in a batch, whatever the model.",
        )
    )
    return fixes


# ------------------------------------------------------------------------------------------ two-tower
def _stages_with(schedule: Schedule, change) -> str:
    """The schedule string with ``change(stage)`` applied to every mining stage."""
    return str(Schedule(tuple(change(st) if st.mines else st for st in schedule.stages)))


def narrower_window(schedule: Schedule, step: float = 0.02) -> str:
    """Every mining window's upper end lowered by ``step`` (kept above its lower end): fewer near-paraphrases."""
    return _stages_with(schedule, lambda st: replace(st, hi=round(max(st.lo + step / 2, st.hi - step), 4)))


def fewer_negatives(schedule: Schedule) -> str:
    """Every mining stage with half as many negatives (at least 1)."""
    return _stages_with(schedule, lambda st: replace(st, count=max(1, st.count // 2)))


def twotower_fixes(cfg: RunConfig) -> list[tuple[str, str]]:
    """Ordered (what to try, why) for a two-tower run that collapsed or failed a gate: the curriculum first
    (a narrower window, fewer negatives), then the temperature, then the memory bank."""
    tt = cfg.twotower
    schedule = parse_schedule(tt.schedule)
    tau, memory = float(tt.tau), int(tt.memory)
    fixes = []
    if schedule.max_count:
        fixes += [
            (
                f'Narrower mining window: `--set "twotower.schedule={narrower_window(schedule)}"` '
                f"(now {schedule})",
                "negatives near the top of the window are often paraphrases of the answer; pushing them away "
                "pulls every query toward a common direction and the separation margin collapses.",
            ),
            (
                f'Fewer mined negatives: `--set "twotower.schedule={fewer_negatives(schedule)}"`',
                "many hard negatives per pair dominate the softmax; fewer keep the in-batch signal alive.",
            ),
        ]
    fixes.append(
        (
            f"Lower temperature: `--set twotower.tau={_fmt(tau * 0.9)}` (now {_fmt(tau)})",
            "a sharper softmax separates the positive from the bulk of the negatives more strongly.",
        )
    )
    if memory:
        fixes.append(
            (
                f"Smaller memory bank: `--set twotower.memory={max(1024, memory // 4)}`",
                "old entries were encoded by an older tower (stale); with an adapter they drift most.",
            )
        )
    fixes.append(
        (
            "Start mining later: keep `none` for more of the first epochs of `twotower.schedule`",
            "hard negatives help once the tower beats the heuristics on easy ones, not before.",
        )
    )
    return fixes


def write_abort_triage(
    run_dir: str | os.PathLike,
    cfg: RunConfig,
    epoch: int,
    reason: str,
    evals: list[tuple[int, float]],
    metric: str = "sep_margin",
) -> str:
    """Write RUN/triage.md for a two-tower abort (the separation margin collapsed); returns the text."""
    rows = "\n".join(f"| {e} | {_num(v)} |" for e, v in evals) or "| - | - |"
    lines = [
        f"# Triage: two-tower run aborted after epoch {epoch}",
        "",
        f"Abort rule: {reason}.",
        "The run stopped; abort.pt holds the weights at this evaluation and last.pt the full training state.",
        "",
        f"| epoch | val {metric} |",
        "|---|---|",
        rows,
    ]
    return _write_triage(run_dir, lines, twotower_fixes(cfg), "two-tower collapse")


# -------------------------------------------------------------------------------------- reports
def write_gate_triage(
    run_dir: str | os.PathLike,
    cfg: RunConfig,
    epoch: int,
    gate_markdown: str,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
) -> str:
    """Write RUN/triage.md for a failed gate; returns the text."""
    names = list(dict.fromkeys(rule["metric"] for rule in gate_rules(cfg.gates, epoch)))
    lines = [
        f"# Triage: a gate failed after epoch {epoch}",
        "",
        "The run stopped here; its last checkpoint (last.pt) is saved. Gate report:",
        "",
        gate_markdown.strip(),
        "",
        "## The gated metrics so far",
        "",
        _metric_table(names, history),
    ]
    lines += _copy_last_lines(metrics, names)
    return _write_triage(
        run_dir, lines, gate_fixes(cfg), "contrastive" if is_contrastive(cfg) else "regression"
    )


def write_nan_triage(
    run_dir: str | os.PathLike,
    cfg: RunConfig,
    epoch: int,
    step: int,
    batch: int,
    loss: float,
    parts: dict[str, float],
    lr: float,
    last_grad_norm: float | None,
) -> str:
    """Write RUN/triage.md for a non-finite loss; returns the text."""
    part_rows = "\n".join(f"| {k} | {_num(v)} |" for k, v in parts.items()) or "| (none) | |"
    lines = [
        f"# Triage: non-finite loss at step {step + 1} (epoch {epoch}, batch {batch + 1})",
        "",
        f"The loss was {_num(loss)} at learning rate {lr:.3g}"
        + (
            f"; the previous step's gradient norm was {last_grad_norm:.4g}."
            if last_grad_norm is not None
            else "."
        ),
        "The run stopped before applying this step: last.pt holds the last good checkpoint, "
        "nan.pt the weights at the failing step (for inspection).",
        "",
        "| loss part | value |",
        "|---|---|",
        part_rows,
    ]
    return _write_triage(run_dir, lines, nan_fixes(cfg), "non-finite loss")


def _write_triage(
    run_dir: str | os.PathLike, lines: list[str], fixes: list[tuple[str, str]], kind: str
) -> str:
    """Append the numbered fixes to ``lines``, write RUN/triage.md and return its text."""
    text = "\n".join(lines + _fix_lines(fixes, kind)) + "\n"
    write_text(os.path.join(run_dir, TRIAGE_FILE), text)
    return text


def _fix_lines(fixes: list[tuple[str, str]], kind: str) -> list[str]:
    out = ["", f"## What to try, in order ({kind})", ""]
    for i, (what, why) in enumerate(fixes, 1):
        out.append(f"{i}. {what}  \n   {why}")
    out += ["", "Resume is not the fix: start a new run (`--out runs/NEW`) with the changed setting."]
    return out


def _metric_table(names: list[str], history: list[dict[str, Any]]) -> str:
    rows = [r for r in history if r.get("kind") == "epoch"]
    head = "| epoch | " + " | ".join(names) + " |"
    sep = "|---|" + "---|" * len(names)
    body = [f"| {r['epoch']} | " + " | ".join(_num(r.get(n)) for n in names) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _copy_last_lines(metrics: dict[str, Any], names: list[str]) -> list[str]:
    """Put the copy-last baseline beside each gated metric when the evaluator reported it."""
    out = []
    for name in names:
        base = metrics.get(name.replace("val_", "val_copy_last_", 1))
        if base is not None and metrics.get(name) is not None:
            out.append(f"- {name}: model {_num(metrics[name])} vs copy_last {_num(base)}")
    if out:
        out = ["", "Beside the copy-last baseline on the same queries:", "", *out]
        close = [
            n for n in names if _near(metrics.get(n), metrics.get(n.replace("val_", "val_copy_last_", 1)))
        ]
        if close:
            out.append("")
            out.append(
                "The model is within 1% of copy_last on "
                + ", ".join(close)
                + ": it has probably learned to copy "
                "the last context vector (see `lvmkit diagnose model RUN` for the offset sweep)."
            )
    return out


def _near(a: Any, b: Any) -> bool:
    return a is not None and b is not None and abs(float(a) - float(b)) <= 0.01 * max(abs(float(b)), 1e-9)


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


def _fmt(x: float) -> str:
    return f"{x:.3g}"
