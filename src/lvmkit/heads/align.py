"""Alignment heads: a linear map fitted after training, from a run's predictions to the true next chunk.

    fit = fit_alignment("runs/gru", bank)        # ridge (alpha chosen on val) and orthogonal Procrustes
    fit.save()                                   # RUN/heads/align-ridge.npz + .json, align-procrustes.*
    lvmkit eval runs/gru --head ridge            # applies it: normalise(prediction @ W + b)

Both are fitted on (prediction -> truth) pairs of the run's TRAIN windows; ridge's alpha is chosen on val hit@5
(full-bank search, open protocol, context excluded); test is read once, for the final table. A head stores
its provenance (bank id, encoder, the checkpoint's sha256, the split) and is refused, with nothing written,
for another bank, another encoder, or a checkpoint that changed since the head was fitted.

    ridge       W, b = argmin ||X W + b - Y||^2 + alpha ||W||^2 (bias not penalised; closed form on centred X, Y)
    procrustes  R = argmin ||X R - Y||_F over orthogonal R = U V^T, where U S V^T = svd(X^T Y); b = 0
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lvmkit.artifacts import read_json, sha256_file, write_json, write_npy, write_text
from lvmkit.bank.bank import VectorBank
from lvmkit.errors import ArtifactError, ConfigError, ProvenanceError

HEAD_KINDS = ("ridge", "procrustes")
DEFAULT_ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1_000.0, 10_000.0)
HEADS_DIR = "heads"
Progress = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------------------------ maths
def fit_ridge_map(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(W [d_in, d_out], b [d_out]) minimising ||x W + b - y||^2 + alpha ||W||^2 (b unpenalised), float64."""
    if alpha < 0:
        raise ConfigError(f"ridge alpha must be >= 0, got {alpha}")
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - xm, y - ym
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ yc)
    return w, ym - xm @ w


def fit_procrustes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The orthogonal R minimising ||x R - y||_F: U V^T from svd(x^T y) (float64)."""
    u, _, vt = np.linalg.svd(np.asarray(x, dtype=np.float64).T @ np.asarray(y, dtype=np.float64))
    return u @ vt


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------------ head
@dataclass
class AlignmentHead:
    """A fitted map ``normalise(p @ weight + bias)`` with where it came from."""

    kind: str
    weight: np.ndarray  # [d, d]
    bias: np.ndarray  # [d]
    provenance: dict[str, Any] = field(default_factory=dict)

    def apply(self, p: np.ndarray) -> np.ndarray:
        return _unit(
            np.asarray(p, dtype=np.float32) @ self.weight.astype(np.float32) + self.bias.astype(np.float32)
        )

    @staticmethod
    def paths(run_dir: str | Path, kind: str) -> tuple[Path, Path]:
        d = Path(run_dir) / HEADS_DIR
        return d / f"align-{kind}.npy", d / f"align-{kind}.json"

    def save(self, run_dir: str | Path) -> Path:
        npy, meta = self.paths(run_dir, self.kind)
        npy.parent.mkdir(parents=True, exist_ok=True)
        write_npy(npy, np.concatenate([self.weight, self.bias[None]]).astype(np.float32))
        write_json(
            meta, {"kind": self.kind, **self.provenance}
        )  # last: a head is complete when its json exists
        return meta

    @classmethod
    def load(cls, run_dir: str | Path, kind: str) -> AlignmentHead:
        if kind not in HEAD_KINDS:
            raise ConfigError(f"unknown head {kind!r}; allowed: {', '.join(HEAD_KINDS)}")
        npy, meta = cls.paths(run_dir, kind)
        if not meta.is_file() or not npy.is_file():
            raise ArtifactError(
                f"{run_dir} has no {kind} alignment head ({meta}); fit one with `lvmkit align {run_dir}`"
            )
        m = np.load(npy)
        info = read_json(meta)
        info.pop("kind", None)
        return cls(kind, m[:-1], m[-1], info)

    def check(self, bank: VectorBank, checkpoint: Path | None = None) -> None:
        """Refuse a head fitted on another bank or encoder, or on a checkpoint that has changed since."""
        p = self.provenance
        enc = bank.encoder.model_dump()
        if p.get("encoder") != enc:
            raise ProvenanceError(
                f"the {self.kind} head was fitted in the space of encoder {p.get('encoder', {}).get('name')!r} "
                f"but bank {bank.path} is {bank.encoder.name!r}; refit it with `lvmkit align RUN --bank {bank.path}`"
            )
        if p.get("bank_id") != bank.manifest.bank_id:
            raise ProvenanceError(
                f"the {self.kind} head was fitted on bank {p.get('bank_id')} but this is bank {bank.manifest.bank_id} "
                f"({bank.path}); refit it with `lvmkit align RUN --bank {bank.path}`"
            )
        if checkpoint is not None and p.get("checkpoint_sha256") != sha256_file(checkpoint):
            raise ProvenanceError(
                f"the {self.kind} head was fitted on another version of {checkpoint} (its sha256 changed); "
                "refit it with `lvmkit align RUN`"
            )


class AlignedModel(nn.Module):
    """``model`` followed by an alignment head: ``normalise(model(ctx, mask) @ W + b)``."""

    def __init__(self, model: nn.Module, head: AlignmentHead):
        super().__init__()
        self.model, self.kind = model, head.kind
        self.register_buffer("weight", torch.from_numpy(head.weight.astype(np.float32)))
        self.register_buffer("bias", torch.from_numpy(head.bias.astype(np.float32)))
        self.spec = {**getattr(model, "spec", {}), "head": head.kind}
        self.trainable = False

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return nn.functional.normalize(self.model(ctx, mask) @ self.weight + self.bias, dim=-1)


def attach_head(target, kind: str, bank: VectorBank) -> None:
    """Wrap an eval ``Target``'s predictor in its run's ``kind`` head (checked against ``bank``); renames it."""
    if target.kind == "baseline" or target.checkpoint is None:
        raise ConfigError(f"--head applies to a run fitted with `lvmkit align`, not to {target.spec}")
    head = AlignmentHead.load(target.checkpoint.parent, kind)
    head.check(bank, target.checkpoint)
    target.predictor = AlignedModel(target.predictor, head).eval()
    target.name = f"{target.name}+{kind}"


# ------------------------------------------------------------------------------------------------ fitting
def val_hit5(bank: VectorBank, queries: np.ndarray, windows) -> float:
    """hit@5 of ``queries`` on ``windows`` by full-bank search (the bank's index), context rows excluded."""
    from lvmkit.eval import metrics as M

    ctx_rows = np.asarray(windows.context_rows(np.arange(len(windows))), dtype=np.int64)
    _, ids = bank.search(queries, 5, exclude=ctx_rows)
    return float(M.hit_at_k(np.asarray(ids, dtype=np.int64), windows.targets, 5).mean())


@dataclass
class AlignFit:
    """Both heads fitted on a run, the alpha sweep on val, and what is needed to save and report them."""

    run: Path
    heads: dict[str, AlignmentHead]
    val: dict[str, float]  # val hit@5: "none", "ridge", "procrustes"
    sweep: list[dict[str, float]]  # ridge alpha -> val hit@5, val cos
    info: dict[str, Any]

    def save(self) -> list[Path]:
        return [h.save(self.run) for h in self.heads.values()]


def fit_alignment(
    run: str | Path,
    bank: str | Path | VectorBank,
    *,
    max_train: int = 20_000,
    max_val: int = 2_000,
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    progress: Progress | None = None,
) -> AlignFit:
    """Fit ridge (alpha by val hit@5) and Procrustes on the run's train-window (prediction, truth) pairs."""
    from lvmkit.eval.command import build_windows, resolve_split, resolve_target
    from lvmkit.eval.evaluator import predict_all

    bank = bank if isinstance(bank, VectorBank) else VectorBank.open(bank)
    t = resolve_target(str(run), bank)
    if t.kind != "run":
        raise ConfigError(f"lvmkit align fits heads stored in a run directory; {run} is not one")
    if not alphas or min(alphas) < 0:
        raise ConfigError(f"alphas must be non-negative numbers, got {alphas}")
    sp, split_source = resolve_split(t, bank, None, (0.8, 0.1, 0.1), 0)
    val, fit_on, _, _ = build_windows(t, bank, sp, "val", max_val, 5, 0, fit=("train",))
    train = fit_on.get("train")
    if train is None:
        raise ConfigError(
            f"the train split of {bank.path} has no windows for {run}: nothing to fit a head on"
        )
    train = train.sample(max_train, 0)
    step = (lambda s: progress(s, 0, 1)) if progress else (lambda s: None)
    step("predicting train windows")
    p_train, y_train = predict_all(t.predictor, train), bank.get(train.targets)
    step("predicting val windows")
    p_val, y_val = predict_all(t.predictor, val), bank.get(val.targets)

    step("ridge alpha sweep")
    sweep = []
    for alpha in alphas:
        w, b = fit_ridge_map(p_train, y_train, alpha)
        q = _unit((p_val @ w + b).astype(np.float32))
        sweep.append(
            {
                "alpha": float(alpha),
                "val_hit@5": val_hit5(bank, q, val),
                "val_cos": float(np.mean(np.sum(q * y_val, 1))),
            }
        )
    best = max(sweep, key=lambda r: (r["val_hit@5"], r["val_cos"]))
    w, b = fit_ridge_map(p_train, y_train, best["alpha"])
    r = fit_procrustes(p_train, y_train)
    heads = {"ridge": (w, b, {"alpha": best["alpha"]}), "procrustes": (r, np.zeros(bank.dim), {})}

    prov = {
        "run": str(run),
        "checkpoint": str(t.checkpoint),
        "checkpoint_sha256": sha256_file(t.checkpoint),
        "bank": str(bank.path),
        "bank_id": bank.manifest.bank_id,
        "encoder": bank.encoder.model_dump(),
        "split_sha256": sp.hash,
        "split_source": split_source,
        "n_train": len(train),
        "n_val": len(val),
        "chosen_on": "val hit@5 (open protocol, full-bank search, context excluded)",
    }
    val_scores = {"none": val_hit5(bank, _unit(p_val), val)}
    out = {}
    for kind, (wk, bk, extra) in heads.items():
        head = AlignmentHead(kind, wk, bk, {**prov, **extra})
        val_scores[kind] = val_hit5(bank, head.apply(p_val), val)
        head.provenance["val_hit@5"] = val_scores[kind]
        head.provenance["val_hit@5_without_head"] = val_scores["none"]
        out[kind] = head
    return AlignFit(Path(run), out, val_scores, sweep, {**prov, "target": t})


def evaluate_heads(
    fit: AlignFit,
    bank: VectorBank,
    *,
    protocol: str = "open",
    max_queries: int | None = None,
    index: str | None = None,
    nprobe: int | None = None,
    n_boot: int = 1000,
    progress=None,
):
    """The run, the run + each head, and the baselines (ridge and blend fitted as ``lvmkit eval`` fits them) on
    the same test windows under ``protocol``: a ``SuiteResult``."""
    from lvmkit.eval.command import build_windows, resolve_split
    from lvmkit.eval.evaluator import evaluate_suite

    t = fit.info["target"]
    sp, _ = resolve_split(t, bank, None, (0.8, 0.1, 0.1), 0)
    test, fit_on, cfg, _ = build_windows(t, bank, sp, "test", max_queries, 5, 0)
    models = {
        t.name: t.predictor,
        **{f"{t.name}+{k}": AlignedModel(t.predictor, h) for k, h in fit.heads.items()},
    }
    return evaluate_suite(
        models, test, bank, train_windows=fit_on.get("train"), val_windows=fit_on.get("val"), seed=cfg.seed,
        protocol=protocol, index=index, nprobe=nprobe, n_boot=n_boot, progress=progress,
    )  # fmt: skip


def report_test(fit: AlignFit, bank: VectorBank, *, max_queries: int | None = None, progress=None):
    """The test table, read once (protocol open): ``evaluate_heads``, written to RUN/heads/align-test.md and .json."""
    from lvmkit.eval.evaluator import format_table

    suite = evaluate_heads(fit, bank, max_queries=max_queries, progress=progress)
    d = fit.run / HEADS_DIR
    sweep = "\n".join(
        f"| {r['alpha']:g} | {100 * r['val_hit@5']:.1f} | {r['val_cos']:.4f} |" for r in fit.sweep
    )
    text = (
        f"# Alignment heads of {fit.run}: test split, protocol open\n\n"
        f"Fitted on {fit.info['n_train']} train windows; ridge alpha {fit.heads['ridge'].provenance['alpha']:g} "
        f"chosen on {fit.info['n_val']} val windows (val hit@5).\n\n"
        f"| alpha | val hit@5 | val cos |\n|---:|---:|---:|\n{sweep}\n\n{format_table(suite)}\n"
    )
    write_json(
        d / "align-test.json", {"protocol": "open", "val": fit.val, "sweep": fit.sweep, **suite.to_dict()}
    )
    write_text(d / "align-test.md", text)
    return suite
