"""The quickstart, end to end: ingest -> index -> train amn and gru -> evaluate beside every baseline -> report.

The CLI command ``lvmkit quickstart`` (lvmkit/cli/quickstart.py) runs these steps with the same commands a user
would type; this module holds what is not a command of its own: the quickstart's run configs and
``compare_runs``, which evaluates several trained runs together with the baselines on ONE set of test windows
(so their numbers are comparable, with paired intervals).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lvmkit.bank import VectorBank
from lvmkit.data import Split
from lvmkit.errors import ConfigError
from lvmkit.eval.evaluator import SuiteResult
from lvmkit.tasks import get_task
from lvmkit.train.checkpoint import check_bank, load_checkpoint
from lvmkit.train.config import RunConfig, config_from_dict, load_config
from lvmkit.train.runs import RunPaths


@dataclass(frozen=True)
class QuickstartSettings:
    """Sized for the embedded corpus (lead sections: median ~4 sentences) on 2 CPU cores, < 10 minutes."""

    articles: int = 5000  # of the 10,033 embedded articles (~18k sentence chunks)
    ctx: int = 4  # lead sections are short: 4 previous sentences ...
    min_ctx: int = 1  # ... left-padded at article starts, so every chunk after the first is a target
    epochs: int = 6
    batch_size: int = 128
    max_test_queries: int = 3000
    models: tuple[str, ...] = ("amn", "gru")


MODEL_KWARGS: dict[str, dict[str, Any]] = {
    "amn": {"hidden": 256, "heads": 4, "dropout": 0.1},
    "gru": {"hidden": 256, "layers": 1, "dropout": 0.1},
}


def quickstart_config(model: str, bank: str | Path, s: QuickstartSettings) -> RunConfig:
    """A small, honest run config, chosen on val (benchmarks/results/levers_quickstart_*.json): the model starts
    AT a learned blend of the heuristics (``anchor: mix``, tuned on val) and learns a residual with InfoNCE
    (+ a little cosine) at a low learning rate; the untrained start competes for best.pt (``from_start``).
    Article-capped batches."""
    if model not in MODEL_KWARGS:
        raise ConfigError(f"quickstart model {model!r} is not known; allowed: {', '.join(MODEL_KWARGS)}")
    return config_from_dict(
        {
            "task": "lvm",
            "bank": str(bank),
            "seed": 0,
            "device": "auto",
            "data": {
                "ctx": s.ctx,
                "min_ctx": s.min_ctx,
                "pad": True,
                "batch_size": s.batch_size,
                "max_per_article": 2,
                "max_eval_queries": 1000,
                "max_test_queries": s.max_test_queries,
            },
            "model": {"name": model, "delta": False, "kwargs": {**MODEL_KWARGS[model], "anchor": "mix"}},
            "loss": {"cos": 0.1, "infonce": 1.0, "tau": 0.05},
            "optim": {"lr": 1e-4, "epochs": s.epochs, "warmup_steps": 50},
            "early_stopping": {"metric": "val_hit@5", "mode": "max", "patience": 3, "from_start": True},
            "checkpoint_every_steps": 200,
            "final_eval": False,  # compare_runs evaluates all models together instead
        },
        source=f"quickstart config for {model}",
    )


def compare_runs(
    run_dirs: dict[str, str | Path],
    bank: VectorBank | str | Path | None = None,
    split: str = "test",
    max_queries: int | None = 5000,
    seed: int = 0,
) -> tuple[SuiteResult, dict[str, Any]]:
    """Evaluate the best checkpoint of each run, and every baseline, on the same ``split`` windows.

    All runs must share the bank, the split (same article assignment) and the window settings (ctx, min_ctx,
    pad, stride): otherwise their numbers are not comparable and this raises ConfigError naming the run.
    The queries come from the runs' task spec (``query_sets``: the same sample rule as the trainer's, capped
    at ``max_queries``); ridge is fitted on the runs' train windows, the blend tuned on their val windows.
    Returns the suite and a small info dict.
    """
    if not run_dirs:
        raise ConfigError("compare_runs needs at least one run directory")
    runs = {name: RunPaths(Path(p)) for name, p in run_dirs.items()}
    cfgs = {name: load_config(r.config) for name, r in runs.items()}
    first = next(iter(runs))
    c0 = cfgs[first]
    bank = bank if isinstance(bank, VectorBank) else VectorBank.open(bank or c0.bank)
    sp = Split.load(runs[first].split, bank)
    for name, r in runs.items():
        other = Split.load(r.split, bank)
        d, d0 = cfgs[name].data, c0.data
        same_data = (cfgs[name].task, d.ctx, d.min_ctx, d.pad, d.stride) == (
            c0.task,
            d0.ctx,
            d0.min_ctx,
            d0.pad,
            d0.stride,
        )
        if other.hash != sp.hash or not same_data:
            raise ConfigError(
                f"run {r.root} used another split or other window settings than run {runs[first].root}; "
                "runs compared together must share task, split and data.ctx/min_ctx/pad/stride"
            )
    spec = get_task(c0.task)
    sets = spec.query_sets(c0, bank, sp)
    windows = sets.get(split, max_queries)
    models = {}
    for name, r in runs.items():
        ckpt = load_checkpoint(r.best)
        check_bank(ckpt, bank, what=f"checkpoint {r.best}")
        models[name] = spec.load_predictor(ckpt, r.best)[1]
    fit_on = spec.fit_sets(sets)
    suite = spec.evaluate_suite(
        c0, models, windows, bank, train_windows=fit_on.get("train"), val_windows=fit_on.get("val"), seed=seed
    )
    d = c0.data
    info = {
        "split": split,
        "n_queries": len(windows),
        "ctx": d.ctx,
        "min_ctx": d.min_ctx,
        "bank": str(bank.path),
        "bank_id": bank.manifest.bank_id,
        "bank_chunks": len(bank),
        "encoder": bank.encoder.describe(),
        "runs": {name: str(r.root.resolve()) for name, r in runs.items()},  # the report finds the runs by it
    }
    return suite, info
