"""Turning lines of text into paragraphs with heading metadata, shared by the readers.

Headings are never chunks: a line recognised as a heading is removed from the text and becomes
``Paragraph.heading`` of the paragraphs that follow it (until the next heading). Two rules exist because
the sources mark headings differently:

* WikiExtractor appends a full stop to section titles ("History.", "Etymology and terminology.").
  ``is_wikiextractor_heading``: ends with ".", at most 10 words, no other ".", "!" or "?", does not start
  lowercase, and has none of a few auxiliary verbs ("is", "was", "has", ...). The last test keeps short
  real paragraphs such as "He was a Roman Catholic." as text; on 7,966 enwiki lines it rejected 32 such
  one-sentence paragraphs among 2,402 candidates.
* Dumps such as wikimedia/wikipedia, plain text files and WikiText carry bare titles ("History").
  ``is_plain_heading``: at most 10 words, no closing punctuation, does not start lowercase. A candidate
  counts as a heading only when a paragraph follows it, so a short last line stays text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from lvmkit.corpus.types import Paragraph

MAX_HEADING_WORDS = 10
_AUXILIARY = re.compile(
    r"\b(is|are|was|were|has|had|have|be|been|can|could|will|would|may|might|should|did|does)\b"
)
_CLOSING = tuple(".!?:;,\"')]»”’…")


def normalize_ws(text: str) -> str:
    """Collapse every run of whitespace (spaces, tabs, newlines, NBSP) to one space and strip the ends."""
    return " ".join(text.split())


def is_wikiextractor_heading(line: str) -> bool:
    words = line.split()
    return (
        line.endswith(".")
        and 0 < len(words) <= MAX_HEADING_WORDS
        and not re.search(r"[.!?]", line[:-1])
        and not line[0].islower()
        and not _AUXILIARY.search(line)
    )


def is_plain_heading(line: str) -> bool:
    words = line.split()
    return 0 < len(words) <= MAX_HEADING_WORDS and not line.endswith(_CLOSING) and not line[0].islower()


def with_headings(blocks: Iterable[str], rule: str) -> tuple[Paragraph, ...]:
    """Paragraphs from text blocks (already whitespace-normalised, empty ones ignored).

    ``rule="wikiextractor"``: heading lines (trailing "." removed) label the following paragraphs; headings
    with nothing after them (e.g. "References.") are dropped. ``rule="plain"``: a candidate is a heading
    only if a paragraph follows it. ``rule="none"``: every block is a paragraph. The heuristics never empty
    an article: if every block looked like a heading, they are all kept as paragraphs.
    """
    blocks = [b for b in blocks if b]
    paragraphs: list[Paragraph] = []
    heading: str | None = None
    for i, block in enumerate(blocks):
        if rule == "wikiextractor" and is_wikiextractor_heading(block):
            heading = block[:-1].rstrip()
        elif rule == "plain" and i + 1 < len(blocks) and is_plain_heading(block):
            heading = block
        else:
            paragraphs.append(Paragraph(block, heading))
    if not paragraphs:
        return tuple(Paragraph(b) for b in blocks)
    return tuple(paragraphs)


def record_blocks(text: str) -> list[str]:
    """Split a record's text (JSON / Parquet / embedded) into paragraph blocks.

    A blank line or a newline ends a paragraph, except a soft wrap: a line that starts lowercase continues a
    previous line that has no closing punctuation ("the National Book Award\\nand Pulitzer Prize").
    """
    blocks: list[list[str]] = []
    fresh = True
    for raw in text.splitlines():
        line = normalize_ws(raw)
        if not line:
            fresh = True
            continue
        soft_wrap = not fresh and blocks and not blocks[-1][-1].endswith(_CLOSING) and line[0].islower()
        if soft_wrap:
            blocks[-1].append(line)
        else:
            blocks.append([line])
        fresh = False
    return [" ".join(b) for b in blocks]


def blank_line_blocks(lines: Iterable[str]) -> list[str]:
    """Paragraphs separated by blank lines; the lines inside one paragraph are joined with a space."""
    blocks: list[str] = []
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(normalize_ws(" ".join(current)))
            current = []
    if current:
        blocks.append(normalize_ws(" ".join(current)))
    return blocks
