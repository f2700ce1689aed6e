"""Evaluation: one evaluator for every part of lvmkit (trainer epochs, two-tower, `lvmkit eval`, benchmarks).

metrics     per-query metrics in pure numpy (hit@k, contain@k, mrr, recall, cosine, CA, offset sweep)
bootstrap   95% intervals over queries, and paired intervals for "model vs best baseline"
evaluator   evaluate(predictor, windows, bank) by full-bank search; evaluate_suite with the baselines
latency     forward + search latency percentiles and throughput
gates       check_gates(metrics, spec): named bounds a run must meet
"""

from lvmkit.eval.bootstrap import bootstrap_ci, bootstrap_ratio_ci, paired_diff_ci
from lvmkit.eval.evaluator import (
    BASELINES,
    Comparison,
    EvalResult,
    SuiteResult,
    evaluate,
    evaluate_suite,
    format_table,
    oracle,
    separation_on_bank,
)
from lvmkit.eval.gates import GateReport, check_gates, load_gates
from lvmkit.eval.latency import LatencyResult, measure_latency

__all__ = [
    "BASELINES",
    "Comparison",
    "EvalResult",
    "GateReport",
    "LatencyResult",
    "SuiteResult",
    "bootstrap_ci",
    "bootstrap_ratio_ci",
    "check_gates",
    "evaluate",
    "evaluate_suite",
    "format_table",
    "load_gates",
    "measure_latency",
    "oracle",
    "paired_diff_ci",
    "separation_on_bank",
]
