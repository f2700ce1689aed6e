"""WikiExtractor output: ``<doc id url title>`` blocks, one paragraph per line.

    <doc id="12" url="http://en.wikipedia.org/wiki?curid=12" title="Anarchism">
    Anarchism                      <- repeats the title: dropped
    Anarchism is a political ...   <- paragraph
    History.                       <- heading: metadata of the paragraphs below, never text
    ...
    </doc>

Article id = the ``id`` attribute, title = the ``title`` attribute with HTML entities decoded
("Heckler &amp; Koch" -> "Heckler & Koch"). A ``<doc>`` that is not closed before the next ``<doc>`` or
the end of the file is skipped and counted (``unclosed_doc``, with the file and line of its opening tag);
non-empty lines between documents are counted as ``text_outside_doc``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

from lvmkit.corpus.readers.io import iter_lines
from lvmkit.corpus.readers.stats import ReadStats
from lvmkit.corpus.readers.text import normalize_ws, with_headings
from lvmkit.corpus.types import Article

_ID = re.compile(r'\bid="([^"]*)"')
_TITLE = re.compile(r'\btitle="(.*)"\s*>\s*$')  # greedy: a title may itself contain a quote


def is_doc_start(line: str) -> bool:
    return line.startswith("<doc ") or line.startswith("<doc>")


def read_file(path: Path, stats: ReadStats) -> Iterator[tuple[Article, str, int]]:
    """Yield ``(article, file, line_of_doc_tag)`` for each closed ``<doc>`` in one file."""
    doc: dict | None = None  # the open document: id, title, line, body lines
    for n, line in iter_lines(path, stats):
        stripped = line.strip()
        if is_doc_start(stripped):
            if doc is not None:
                stats.add(
                    "unclosed_doc", str(path), doc["line"], f"id={doc['id']!r} has no </doc> before line {n}"
                )
            m_id, m_title = _ID.search(stripped), _TITLE.search(stripped)
            doc_id = m_id.group(1) if m_id else f"{path.name}:{n}"
            title = html.unescape(m_title.group(1)) if m_title else ""
            doc = {"id": doc_id, "title": title, "line": n, "body": []}
        elif stripped == "</doc>":
            if doc is None:
                stats.add("text_outside_doc", str(path), n, "</doc> without <doc>")
                continue
            yield _article(doc), str(path), doc["line"]
            doc = None
        elif doc is not None:
            doc["body"].append(stripped)
        elif stripped:
            stats.add("text_outside_doc", str(path), n, stripped[:60])
    if doc is not None:
        stats.add(
            "unclosed_doc",
            str(path),
            doc["line"],
            f"id={doc['id']!r} has no </doc> before the end of the file",
        )


def _article(doc: dict) -> Article:
    lines = [normalize_ws(x) for x in doc["body"]]
    lines = [x for x in lines if x]
    title = doc["title"] or (lines[0] if lines else "")
    if lines and lines[0].casefold() == normalize_ws(title).casefold():
        lines = lines[1:]
    return Article(id=doc["id"], title=title, paragraphs=with_headings(lines, rule="wikiextractor"))
