"""Print the README's benchmark section from benchmarks/results/*.json / *.md (what the scripts wrote).

python benchmarks/readme_tables.py > /tmp/bench.md     # then paste between the README markers
"""

from __future__ import annotations

import json
from pathlib import Path

RES = Path(__file__).resolve().parent / "results"


def load(name: str):
    p = RES / name
    return json.loads(p.read_text()) if p.exists() else None


def lvm(name: str, title: str) -> list[str]:
    d = load(name)
    if d is None:
        return [f"{title}: not run in this revision."]
    out = [f"#### {title}", ""]
    for ctx, v in d["by_ctx"].items():
        out += [f"ctx {ctx}: {v['n_test_windows']:,} test windows, models trained on {v['n_train_windows']:,} "
                f"train windows available (capped as stated above).", ""]  # fmt: skip
        md = (RES / name).with_suffix(".md").read_text()
        out += [md.split("\n", 2)[2].strip() if md.startswith("###") else md.strip(), ""]
    return out


def simple(name: str, title: str) -> list[str]:
    md = (RES / name).with_suffix(".md")
    if not md.exists():
        return [f"{title}: not run in this revision.", ""]
    return [f"#### {title}", "", md.read_text().strip(), ""]


def main() -> None:
    lines: list[str] = []
    lines += lvm("lvm_quality.json", "ctx 5")
    lines += lvm("lvm_quality_ctx100.json", "ctx 100")
    for name, title in [
        ("encode.json", "Encoding throughput"),
        ("search.json", "Search"),
        ("train_throughput.json", "Training throughput"),
        ("segmenters.json", "Sentence segmenters"),
    ]:
        lines += simple(name, title)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
