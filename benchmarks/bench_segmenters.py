"""Compare the offline sentence segmenters (blingfire, pysbd), raw and with lvmkit's fixes, on enwiki.

    .venv/bin/python benchmarks/bench_segmenters.py                # 1,000 paragraphs, writes the JSON
    .venv/bin/python benchmarks/bench_segmenters.py --smoke        # 40 paragraphs, prints only

Measured per configuration:
  speed            paragraphs/s (one pass after a short warm-up, single process)
  error heuristics  cuts after common abbreviations (e.g., i.e., U.S., Dr., ...), after an initial
                    ("J." | "R. R. Tolkien"), inside a number ("3." | "14"), before a lowercase word,
                    sentences shorter than 3 characters, and sentences over 80 words (likely missed cuts).
                    These rules are written here independently of lvmkit.corpus.segment, but the fixes
                    there target the same errors, so "fixed" rows are expected to score low on them;
                    "after abbreviation" also counts U.S. at a true sentence end (an upper bound).
  agreement        cut positions found by one configuration and not the other, with examples to read
  challenge        exact match on a small hand-labelled set of tricky paragraphs (CHALLENGE below)

Paragraphs: every --stride-th paragraph of the corpus (default ../shared/data/enwiki2015) from the start.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from itertools import pairwise
from pathlib import Path

from lvmkit.artifacts import write_json
from lvmkit.corpus import read_corpus
from lvmkit.corpus.segment import SEGMENTERS, segmenter_version, sentence_spans

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared/data/enwiki2015"
DEFAULT_OUT = REPO / "benchmarks/results/segmenters.json"
CONFIGS = [(seg, fix) for seg in SEGMENTERS for fix in (False, True)]

ABBREVIATIONS = {
    "e.g.",
    "i.e.",
    "cf.",
    "vs.",
    "etc.",
    "u.s.",
    "u.k.",
    "dr.",
    "mr.",
    "mrs.",
    "st.",
    "no.",
    "jr.",
}
INITIAL = re.compile(r"(?:^|\s)[A-Z]\.$")

# Hand-labelled paragraphs: each is the list of its true sentences (joined with one space to form the input).
CHALLENGE = [
    ["Tolkien was born in Bloemfontein, e.g. in the Orange Free State.", "He moved to England as a child."],
    ['J. R. R. Tolkien wrote "The Hobbit".', "It was published in 1937."],
    ["The value of pi is about 3.14159.", "It is irrational."],
    ["Dr. Smith met Mr. Jones at St. Paul's Cathedral.", "They talked for an hour."],
    ["The U.S. Army was founded in 1775.", "It is the oldest branch."],
    ["He moved to the U.S. in 1990 and became a citizen.", "His wife followed him."],
    ["The company, i.e. the parent firm, lost money.", "Shares fell 4.5 percent."],
    ["Why did it fail?", "Nobody knows!", "The inquiry continues."],
    ['He said: "We will win."', "They lost."],
    ["The reaction (see Fig. 3) is fast.", "It releases heat."],
    ["The ship No. 5 sank in 1912.", "All crew survived."],
    ["Born c. 1200 in York, he died young.", "Little else is known."],
    ["George W. Bush was president.", "Barack Obama followed."],
    ["Temperatures range from 0.5 to 1.5 degrees.", "Rain is rare."],
    ["The book was a success.", "A sequel appeared in 1954."],
    ["Smith et al. reported the effect in 2001.", "Later work confirmed it."],
    ["It was released in Jan. 2004 to mixed reviews.", "Sales were low."],
    ["The Washington, D.C. area has many museums.", "Most are free."],
    ["Population: 1,234 (2010).", "The town lies on the river."],
    ["Its area is 3.5 km² and its population 12,000.", "It has a school."],
    ["He wrote many books.", "J. K. Rowling praised them."],
    ["The trial ended in 1921.", "Dr. Brown was acquitted."],
    ["The album sold two million copies in the U.S.", "It also topped the charts in Canada."],
    ["See the capitals (e.g. Paris, Rome).", "Each is old."],
    ['"Is it safe?" he asked.', "Nobody answered."],
    ['The term comes from Greek, i.e. "without rulers".', "It was first used in 1539."],
    ["It grew by 3.5% in 2004.", "Analysts were surprised."],
    ["The station opened in 1890.", "It closed in 1960.", "The line was lifted."],
]


def load_paragraphs(corpus: Path, n: int, stride: int) -> list[str]:
    out: list[str] = []
    i = 0
    for article in read_corpus(corpus):
        for p in article.paragraphs:
            if i % stride == 0:
                out.append(p.text)
                if len(out) == n:
                    return out
            i += 1
    return out


def error_counts(text: str, spans: list[tuple[int, int]]) -> dict[str, int]:
    c = dict.fromkeys(
        ("after_abbreviation", "after_initial", "inside_number", "lowercase_start", "short", "long"), 0
    )
    sents = [text[a:b] for a, b in spans]
    c["short"] = sum(len(s) < 3 for s in sents)
    c["long"] = sum(len(s.split()) > 80 for s in sents)
    for (pa, pb), (a, _) in pairwise(spans):
        prev, nxt = text[pa:pb], text[a:]
        c["after_abbreviation"] += prev.split()[-1].lower() in ABBREVIATIONS
        c["after_initial"] += bool(INITIAL.search(prev))
        c["inside_number"] += prev[-2:-1].isdigit() and prev.endswith(".") and nxt[:1].isdigit() and pb == a
        c["lowercase_start"] += nxt[:1].islower()
    return c


def run(paragraphs: list[str]) -> tuple[dict, dict[str, list[list[tuple[int, int]]]]]:
    results, all_spans = {}, {}
    for seg, fix in CONFIGS:
        name = f"{seg}{'+fix' if fix else ''}"
        for p in paragraphs[:20]:  # warm-up (loads pysbd's rules, blingfire's model)
            sentence_spans(p, seg, fix)
        t0 = time.perf_counter()
        spans = [sentence_spans(p, seg, fix) for p in paragraphs]
        dt = time.perf_counter() - t0
        errors = dict.fromkeys(error_counts("", []), 0)
        for p, s in zip(paragraphs, spans, strict=True):
            for k, v in error_counts(p, s).items():
                errors[k] += v
        exact = sum(
            [(a, b) for a, b in sentence_spans(" ".join(gold), seg, fix)] == _gold_spans(gold)
            for gold in CHALLENGE
        )
        results[name] = {
            "segmenter": seg,
            "fix": fix,
            "version": segmenter_version(seg),
            "seconds": round(dt, 4),
            "paragraphs_per_s": round(len(paragraphs) / dt, 1) if dt else None,
            "sentences": sum(len(s) for s in spans),
            "errors": errors,
            "challenge_exact": f"{exact}/{len(CHALLENGE)}",
        }
        all_spans[name] = spans
    return results, all_spans


def _gold_spans(gold: list[str]) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for s in gold:
        spans.append((pos, pos + len(s)))
        pos += len(s) + 1
    return spans


def agreement(paragraphs, spans_a, spans_b, examples: int = 8) -> dict:
    both = only_a = only_b = 0
    ex_a, ex_b = [], []
    for p, sa, sb in zip(paragraphs, spans_a, spans_b, strict=True):
        ca, cb = {a for a, _ in sa[1:]}, {a for a, _ in sb[1:]}
        both += len(ca & cb)
        only_a += len(ca - cb)
        only_b += len(cb - ca)
        for cut in sorted(ca - cb)[: max(0, examples - len(ex_a))]:
            ex_a.append(f"...{p[max(0, cut - 50) : cut]} || {p[cut : cut + 40]}...")
        for cut in sorted(cb - ca)[: max(0, examples - len(ex_b))]:
            ex_b.append(f"...{p[max(0, cut - 50) : cut]} || {p[cut : cut + 40]}...")
    return {
        "cuts_in_both": both,
        "only_first": only_a,
        "only_second": only_b,
        "examples_only_first": ex_a,
        "examples_only_second": ex_b,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--paragraphs", type=int, default=1000)
    ap.add_argument("--stride", type=int, default=5)
    ap.add_argument(
        "--out", type=Path, default=None, help=f"JSON output (default {DEFAULT_OUT}; none with --smoke)"
    )
    ap.add_argument("--smoke", action="store_true", help="40 paragraphs, print only: checks the script works")
    args = ap.parse_args(argv)
    if args.smoke:
        args.paragraphs = min(args.paragraphs, 40)
    elif args.out is None:
        args.out = DEFAULT_OUT
    if not args.corpus.exists():
        print(f"corpus {args.corpus} not found; pass --corpus", file=sys.stderr)
        return 2
    paragraphs = load_paragraphs(args.corpus, args.paragraphs, args.stride)
    results, spans = run(paragraphs)
    agree = {
        f"{a} vs {b}": agreement(paragraphs, spans[a], spans[b])
        for a, b in (("blingfire", "pysbd"), ("blingfire+fix", "pysbd+fix"))
    }
    header = f"{'config':<15}{'para/s':>9}{'sents':>7}{'abbrev':>7}{'initial':>8}{'number':>7}{'lower':>6}{'short':>6}{'long':>5}{'challenge':>10}"
    print(f"{len(paragraphs)} enwiki paragraphs (every {args.stride}th) from {args.corpus}")
    print(header)
    for name, r in results.items():
        e = r["errors"]
        print(
            f"{name:<15}{r['paragraphs_per_s']:>9}{r['sentences']:>7}{e['after_abbreviation']:>7}{e['after_initial']:>8}"
            f"{e['inside_number']:>7}{e['lowercase_start']:>6}{e['short']:>6}{e['long']:>5}{r['challenge_exact']:>10}"
        )
    for pair, a in agree.items():
        print(
            f"{pair}: {a['cuts_in_both']} cuts agree, {a['only_first']} only first, {a['only_second']} only second"
        )
    if args.out is not None:
        write_json(
            args.out,
            {
                "corpus": str(args.corpus),
                "paragraphs": len(paragraphs),
                "stride": args.stride,
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "load_average_1m": round(os.getloadavg()[0], 2),  # speeds compare only when this is low
                },
                "results": results,
                "agreement": agree,
            },
        )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
