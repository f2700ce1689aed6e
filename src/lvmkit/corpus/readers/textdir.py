"""A directory of plain ``.txt`` files (optionally .bz2/.gz/.xz), one file = one article.

Files are read in sorted order of their path relative to the directory (subdirectories included,
hidden files skipped). Article id = that relative path (``"notes/intro.txt"``). Paragraphs are
separated by blank lines; the lines inside a paragraph are joined (hard-wrapped text is fine).
Title = the first paragraph when it is a single short line without closing punctuation (it is then
removed from the text), otherwise the file name without suffixes. Later bare short lines followed by a
paragraph are headings (see ``text.is_plain_heading``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from lvmkit.corpus.readers.io import base_stem, iter_lines
from lvmkit.corpus.readers.stats import ReadStats
from lvmkit.corpus.readers.text import blank_line_blocks, is_plain_heading, with_headings
from lvmkit.corpus.types import Article


def read_file(path: Path, stats: ReadStats, article_id: str) -> Iterator[tuple[Article, str, None]]:
    lines = [line for _, line in iter_lines(path, stats)]
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    first_is_single_line = first is not None and (first + 1 == len(lines) or not lines[first + 1].strip())
    blocks = blank_line_blocks(lines)
    title = base_stem(path)
    if blocks and first_is_single_line and is_plain_heading(blocks[0]):
        title, blocks = blocks[0], blocks[1:]
    yield Article(id=article_id, title=title, paragraphs=with_headings(blocks, rule="plain")), str(path), None
