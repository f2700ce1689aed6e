"""Findings: what a diagnosis says, one checked number at a time.

Every diagnosis (``bank``, ``data``, ``model``) is a list of ``Finding`` objects. A finding is one measured
number, the rule it was judged by, and a verdict:

    pass   within the rule
    warn   outside the comfortable range: read the advice before trusting results
    fail   a problem that makes results wrong or meaningless (leakage, a collapsed model, ...)
    info   a number worth seeing that no rule judges (counts, shapes)

Thresholds are written as text beside the number ("|x| <= 0.10"), so a table of findings can be read on its
own. A ``Diagnosis`` collects findings plus free-form ``stats`` and writes itself as JSON; the CLI renders
it as a rich table (the library never imports rich).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lvmkit.artifacts import write_json

STATUSES = ("pass", "info", "warn", "fail")  # in order of severity


@dataclass(frozen=True)
class Finding:
    """One checked number: ``value`` judged against ``threshold`` gave ``status``; ``message`` explains."""

    name: str
    status: str
    value: float | int | None
    threshold: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"finding status must be one of {STATUSES}, got {self.status!r}")


def judge(
    name: str,
    value: float,
    *,
    warn_above: float | None = None,
    fail_above: float | None = None,
    warn_below: float | None = None,
    fail_below: float | None = None,
    ok: str = "",
    warn: str = "",
    fail: str = "",
    details: dict[str, Any] | None = None,
) -> Finding:
    """Judge ``value`` by strict bounds: fail beyond a ``fail_*`` bound, else warn beyond a ``warn_*`` bound,
    else pass. A NaN value fails (there was nothing to measure). The threshold text lists the pass range.

    ``ok`` / ``warn`` / ``fail`` are the messages for each outcome (``warn`` falls back to ``fail``).
    """
    bounds = []
    if warn_below is not None or fail_below is not None:
        bounds.append(f">= {_fmt(warn_below if warn_below is not None else fail_below)}")
    if warn_above is not None or fail_above is not None:
        bounds.append(f"<= {_fmt(warn_above if warn_above is not None else fail_above)}")
    hard = []
    if fail_below is not None and warn_below is not None:
        hard.append(f"fail < {_fmt(fail_below)}")
    if fail_above is not None and warn_above is not None:
        hard.append(f"fail > {_fmt(fail_above)}")
    threshold = " and ".join(bounds) + (f" ({', '.join(hard)})" if hard else "")
    v = float(value)
    if math.isnan(v):
        status, msg = "fail", f"nothing to measure ({fail or warn or ok})"
    elif (fail_above is not None and v > fail_above) or (fail_below is not None and v < fail_below):
        status, msg = "fail", fail or warn
    elif (warn_above is not None and v > warn_above) or (warn_below is not None and v < warn_below):
        status, msg = "warn", warn or fail
    else:
        status, msg = "pass", ok
    return Finding(name, status, _plain(value), threshold, msg, dict(details or {}))


def info(
    name: str, value: float | int | None, message: str, details: dict[str, Any] | None = None
) -> Finding:
    """A number shown without a rule."""
    return Finding(name, "info", _plain(value), "", message, dict(details or {}))


@dataclass
class Diagnosis:
    """The findings of one diagnosis of one subject (a bank path, a config, a checkpoint)."""

    kind: str  # "bank", "data" or "model"
    subject: str
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def add(self, finding: Finding) -> Finding:
        self.findings.append(finding)
        return finding

    @property
    def status(self) -> str:
        """The worst status among the findings: "fail", "warn" or "pass" (info findings do not count)."""
        statuses = {f.status for f in self.findings}
        return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "pass"

    @property
    def ok(self) -> bool:
        """No finding failed (warnings allowed)."""
        return all(f.status != "fail" for f in self.findings)

    def counts(self) -> dict[str, int]:
        return {s: sum(f.status == s for f in self.findings) for s in STATUSES}

    def get(self, name: str) -> Finding:
        for f in self.findings:
            if f.name == name:
                return f
        raise KeyError(f"no finding named {name!r}; have: {', '.join(f.name for f in self.findings)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "status": self.status,
            "ok": self.ok,
            "counts": self.counts(),
            "findings": [asdict(f) for f in self.findings],
            "stats": self.stats,
        }

    def save(self, path: str | Path) -> Path:
        """Write the diagnosis as JSON (atomically); returns the path."""
        path = Path(path)
        write_json(path, self.to_dict())
        return path


def _fmt(x: float | None) -> str:
    return "?" if x is None else f"{x:g}"


def _plain(value: Any) -> float | int | None:
    """numpy scalars to plain Python numbers (for JSON)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu" else f
