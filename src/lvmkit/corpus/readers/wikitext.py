"""Raw WikiText (WikiText-2 / WikiText-103 ``*.raw`` / ``*.tokens``): articles delimited by headers.

     = Valkyria Chronicles III =          <- a new article, title "Valkyria Chronicles III"
     Senjō no Valkyria 3 : Unrecorded ... <- paragraph (one per line)
     = = Gameplay = =                     <- section heading (any depth, e.g. = = = Reception = = =)

The files are tokenised ("lit . Valkyria", "1 @,@ 000"); ``detokenize`` undoes the reversible markers
(``@-@`` ``@,@`` ``@.@``) and the spaces before closing / after opening punctuation, so that sentence
segmentation sees ordinary prose. Quotes are left as they are. There are no page ids in WikiText, so
the article id is ``<file name>:<line of the header>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from lvmkit.corpus.readers.io import iter_lines
from lvmkit.corpus.readers.stats import ReadStats
from lvmkit.corpus.readers.text import normalize_ws
from lvmkit.corpus.types import Article, Paragraph

_HEADER = re.compile(r"(=+(?:\s+=+)*)\s+(\S.*?)\s+(=+(?:\s+=+)*)")  # "= = Title = =" or "== Title =="
_AT_MARKER = re.compile(r" @([-,.])@ ")
_SPACE_BEFORE = re.compile(r" ([,.;:!?%)\]}]|'s\b|n't\b|'t\b|'re\b|'ve\b|'ll\b|'d\b|'m\b)")
_SPACE_AFTER = re.compile(r"([(\[{$]) ")


def parse_header(line: str) -> tuple[int, str] | None:
    """``(level, text)`` for a header line (`` = T = `` is level 1, `` = = S = = `` level 2), else None."""
    m = _HEADER.fullmatch(line.strip())
    if not m:
        return None
    left, text, right = m.group(1).count("="), m.group(2), m.group(3).count("=")
    return (left, text) if left == right else None


def detokenize(text: str) -> str:
    text = _AT_MARKER.sub(r"\1", text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    return _SPACE_AFTER.sub(r"\1", text)


def looks_like_wikitext(first_line: str) -> bool:
    header = parse_header(first_line)
    return header is not None and header[0] == 1


def read_file(path: Path, stats: ReadStats) -> Iterator[tuple[Article, str, int]]:
    title, start, heading = None, 0, None
    paragraphs: list[Paragraph] = []
    for n, line in iter_lines(path, stats):
        if not line.strip():
            continue
        header = parse_header(line)
        if header is not None and header[0] == 1:
            if title is not None:
                yield _article(path, start, title, paragraphs), str(path), start
            title, start, heading, paragraphs = detokenize(header[1]), n, None, []
        elif title is None:
            stats.add("text_outside_doc", str(path), n, "text before the first ' = Title = ' header")
        elif header is not None:
            heading = detokenize(header[1])
        else:
            paragraphs.append(Paragraph(normalize_ws(detokenize(line)), heading))
    if title is not None:
        yield _article(path, start, title, paragraphs), str(path), start


def _article(path: Path, start: int, title: str, paragraphs: list[Paragraph]) -> Article:
    return Article(id=f"{path.name}:{start}", title=title, paragraphs=tuple(paragraphs))
