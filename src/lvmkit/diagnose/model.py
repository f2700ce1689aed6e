"""``lvmkit diagnose model``: a postmortem of a trained predictor, on held-out windows.

Four questions, each a finding with its number and threshold:

    separation margin   E[cos(q, positive)] - E[cos(q, n)] over the top-16 bank neighbours n of each
                        prediction q, the positive excluded (``evaluator.separation_on_bank``). Below 0.10 the
                        truth does not stand out from what the index will return around it (warn).
    collapse            mean cos(q, truth) vs mean cos(q, last context vector). A model that learned to copy
                        its input sits nearer the last context chunk than the next one: margin
                        c_truth - c_last < 0 fails, < 0.10 warns. The offset sweep c_k (k = -3..3) is in
                        the details: c_-1 > c_0 is the same collapse seen from the bank.
    prediction variance total variance of the (unit) predictions across queries, E||q - mean q||^2, divided
                        by the same for the targets. A constant predictor has 0 (fail below 0.01); a model
                        that regressed to the mean direction has little (warn below 0.10).
    same-article        share of in-batch negatives from the anchor's own article in the training batches the
    negatives           sampler forms with the run's batch size and cap (``data.same_article_share``).

``diagnose_target`` resolves RUN | CHECKPOINT | baseline:NAME exactly as ``lvmkit eval`` does (same
provenance checks, same split and query windows), then calls ``diagnose_model``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lvmkit.bank.bank import VectorBank
from lvmkit.data.samplers import ArticleCappedBatchSampler
from lvmkit.diagnose.data import batch_share_finding, same_article_share
from lvmkit.diagnose.findings import Diagnosis, info, judge
from lvmkit.errors import ConfigError
from lvmkit.eval import metrics as M
from lvmkit.eval.evaluator import _numpy, _Predict, separation_on_bank

SEPARATION_WARN = 0.10
COLLAPSE_WARN = 0.10
VARIANCE_FAIL = 0.01
VARIANCE_WARN = 0.10


def predict_windows(predictor, windows, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run ``predictor`` over ``windows``: predictions, targets, last context vectors and target rows."""
    preds, targets, lasts, rows = [], [], [], []
    with _Predict(predictor) as predict:
        for s in range(0, len(windows), batch_size):
            idx = np.arange(s, min(len(windows), s + batch_size))
            batch = windows.batch(idx)
            preds.append(predict(batch))
            targets.append(_numpy(batch.target))
            lasts.append(_numpy(batch.ctx[:, -1]))  # left padding: the last position is always real
            rows.append(_numpy(batch.target_ids).astype(np.int64))
    return {
        "pred": np.concatenate(preds).astype(np.float32),
        "target": np.concatenate(targets).astype(np.float32),
        "last": np.concatenate(lasts).astype(np.float32),
        "rows": np.concatenate(rows),
    }


def total_variance(x: np.ndarray) -> float:
    """E||u - mean u||^2 over the rows u of ``x`` after L2 normalisation (0 for a constant predictor)."""
    u = np.asarray(x, dtype=np.float64)
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    return float(((u - u.mean(axis=0)) ** 2).sum(axis=1).mean())


def diagnose_model(
    predictor,
    windows,
    bank: VectorBank,
    *,
    train_windows=None,
    batch_size: int = 64,
    max_per_article: int = 2,
    sampler_seed: int = 0,
    n_neighbours: int = 16,
    nprobe: int | None = None,
    name: str = "model",
    subject: str | None = None,
) -> Diagnosis:
    """Diagnose ``predictor`` (nn.Module or callable on a WindowBatch) on ``windows`` of ``bank``.

    ``train_windows`` with ``batch_size`` / ``max_per_article`` / ``sampler_seed`` (the run's settings) give
    the same-article negative share of the batches the sampler forms in epoch 1.
    """
    if len(windows) == 0:
        raise ConfigError("no windows to diagnose the model on")
    d = Diagnosis("model", subject or name)
    p = predict_windows(predictor, windows)
    pred, target, last, rows = p["pred"], p["target"], p["last"], p["rows"]
    d.stats.update(model=name, n_queries=len(rows), bank=str(bank.path), bank_id=bank.manifest.bank_id)

    sep = separation_on_bank(pred, rows, bank, n_neighbours=n_neighbours, nprobe=nprobe)
    d.add(_separation_finding(sep, n_neighbours))
    c_truth = float(M.mean_cosine(pred, target).mean())
    d.add(_collapse_finding(pred, c_truth, last, rows, bank))
    d.add(_variance_finding(pred, target))
    if train_windows is not None and len(train_windows):
        d.add(_batch_share(train_windows, batch_size, max_per_article, sampler_seed))
    d.add(info("cos_truth", c_truth, f"mean cos(prediction, truth) over {len(rows)} windows"))
    return d


def _separation_finding(sep: np.ndarray, n_neighbours: int):
    sep_mean = float(np.nanmean(sep))
    return judge(
        "separation_margin",
        sep_mean,
        warn_below=SEPARATION_WARN,
        ok=f"the truth is {sep_mean:.3f} closer to the prediction than its top-{n_neighbours} bank neighbours",
        warn=f"E[cos(q, truth)] - E[cos(q, top-{n_neighbours} neighbours)] = {sep_mean:+.3f}: the truth does not "
        "stand out from what the index returns around the prediction; a contrastive term (InfoNCE) trains "
        "exactly this margin",
        details={"share_positive": float(np.mean(sep > 0)), "n_neighbours": n_neighbours},
    )


def _collapse_finding(pred: np.ndarray, c_truth: float, last: np.ndarray, rows: np.ndarray, bank: VectorBank):
    c_last = float(M.mean_cosine(pred, last).mean())
    sweep = M.offset_sweep(pred, bank.vectors, rows, np.asarray(bank.article_codes))
    return judge(
        "collapse_margin",
        c_truth - c_last,
        fail_below=0.0,
        warn_below=COLLAPSE_WARN,
        ok=f"cos to the truth {c_truth:.3f} vs to the last context vector {c_last:.3f}",
        warn=f"cos to the truth {c_truth:.3f} is barely above cos to the last context vector {c_last:.3f}: the "
        "model is close to copying its input; compare with copy_last and try a contrastive loss",
        fail=f"predictions are nearer the last context vector (cos {c_last:.3f}) than the truth (cos "
        f"{c_truth:.3f}): copy-last collapse. Use delta mode with a contrastive term, or check the loss",
        details={"cos_truth": c_truth, "cos_last": c_last, "offset_sweep": sweep.to_dict()},
    )


def _variance_finding(pred: np.ndarray, target: np.ndarray):
    var_pred, var_target = total_variance(pred), total_variance(target)
    ratio = var_pred / var_target if var_target > 0 else float("nan")
    return judge(
        "prediction_variance",
        ratio,
        fail_below=VARIANCE_FAIL,
        warn_below=VARIANCE_WARN,
        ok=f"predictions vary across queries ({var_pred:.3f}) about as targets do ({var_target:.3f})",
        warn=f"predictions vary little across queries ({var_pred:.4f} vs targets {var_target:.3f}): the model "
        "regresses towards the mean direction; a contrastive term or centering the bank helps",
        fail=f"the predictions are (nearly) constant (variance {var_pred:.2e} vs targets {var_target:.3f}): the "
        "model ignores its input; check the loss, the learning rate and the data",
        details={"var_pred": var_pred, "var_target": var_target},
    )


def _batch_share(train_windows, batch_size: int, max_per_article: int, sampler_seed: int):
    """The same-article negative share of the batches the run's sampler forms in epoch 1."""
    articles = train_windows.article_of_all()
    sampler = ArticleCappedBatchSampler(
        articles, batch_size, max_per_article, seed=sampler_seed, drop_last=False
    )
    sampler.set_epoch(1)
    return batch_share_finding(same_article_share(list(sampler), articles), batch_size, max_per_article)


def diagnose_target(
    target: str,
    bank: str | Path | VectorBank,
    *,
    split: str = "val",
    max_queries: int | None = 2000,
    split_file: str | Path | None = None,
    ctx: int = 5,
    seed: int = 0,
    nprobe: int | None = None,
) -> Diagnosis:
    """``diagnose_model`` for RUN | CHECKPOINT | baseline:NAME, on the same windows ``lvmkit eval`` uses."""
    from lvmkit.eval.command import (
        build_windows,
        resolve_split,
        resolve_target,
        target_predictor,
        window_info,
    )
    from lvmkit.tasks import get_task

    bank = bank if isinstance(bank, VectorBank) else VectorBank.open(bank)
    t = resolve_target(target, bank)
    sp, source = resolve_split(t, bank, split_file, (0.8, 0.1, 0.1), seed)
    windows, fit_on, cfg, _ = build_windows(t, bank, sp, split, max_queries, ctx, seed, fit=("train", "val"))
    predictor, space = get_task(cfg.task).search_space(target_predictor(t, bank, fit_on), bank)
    train = fit_on.get("train")
    d = diagnose_model(
        predictor,
        windows,
        space,
        train_windows=train,
        batch_size=cfg.data.batch_size,
        max_per_article=cfg.data.max_per_article,
        sampler_seed=cfg.seed,
        nprobe=nprobe,
        name=t.name,
        subject=t.describe(),
    )
    d.stats.update(split=split, split_source=source, task=cfg.task, windows=window_info(cfg, split))
    return d
