"""Evaluation: one evaluator for every part of lvmkit (trainer epochs, two-tower, `lvmkit eval`, benchmarks).

metrics     per-query metrics in pure numpy (hit@k, contain@k, mrr, recall, cosine, CA, offset sweep)
bootstrap   95% intervals over queries, and paired intervals for "model vs best baseline"
evaluator   evaluate(predictor, windows, bank) by full-bank search; evaluate_suite with the baselines
latency     forward + search latency percentiles and throughput
gates       check_gates(metrics, spec): named bounds a run must meet

The names below are imported on first use (PEP 562), so ``from lvmkit.eval.metrics import ...`` (numpy only)
does not pull in torch and FAISS through this package.
"""

import importlib
from typing import Any

_WHERE = {
    "bootstrap": ("bootstrap_ci", "bootstrap_ratio_ci", "paired_diff_ci"),
    "evaluator": (
        "BASELINES",
        "Comparison",
        "EvalResult",
        "SuiteResult",
        "evaluate",
        "evaluate_suite",
        "format_table",
        "oracle",
        "separation_on_bank",
    ),
    "gates": ("GateReport", "check_gates", "load_gates"),
    "latency": ("LatencyResult", "measure_latency"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'lvmkit.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lvmkit.eval.{module}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
