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

HTML/XML tags that WikiExtractor lets through (``</dl>``, ``<br>``, ``<poem>``, ``<span id="x" />``,
``<ref name="...">``) are removed from the body lines by ``strip_tags`` and the whitespace collapsed. Only
the names of tags MediaWiki accepts in wikitext (``TAG_NAMES``) are removed, and only in the shapes
``<name ...>``, ``</name>``, ``<name .../>`` (a self-closing tag such as ``<b/>`` is removed whatever its
name, since no text has that shape): text such as ``a < b``, ``x<3``, ``<-``, ``2 < x > 1``, a
grapheme ``<r>``, a Turing-machine encoding ``<M>`` or ``the <applet> tag`` (from an article about HTML)
stays as it is. A line that still has text is counted as repaired (``html_tags``); a line that was only
tags is dropped and counted as skipped (``markup_only_line``).
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

# MediaWiki's allowed HTML tags and the usual extension tags. One-letter names (b, i, p, s, u) are left
# out on purpose: WikiExtractor already removes those tags, so a surviving "<b>" is far more often a
# grapheme in a linguistics article than markup.
_TAG_LIST = """
    abbr bdi big blockquote br caption center chem cite code data dd del dfn div dl dt em font gallery
    h1 h2 h3 h4 h5 h6 hiero hr imagemap includeonly indicator ins kbd li mark math noinclude nowiki ol
    onlyinclude poem pre rb ref references rp rt rtc ruby samp score section small source span strike
    strong sub sup syntaxhighlight table td templatedata th time timeline tr tt ul var wbr
"""
TAG_NAMES = frozenset(_TAG_LIST.split())
_NAMES = "|".join(sorted(TAG_NAMES, key=len, reverse=True))
_TAG = re.compile(
    rf"</?(?:{_NAMES})(?:\s[^<>]*)?/?>"  # <ref name="x">, </dl>, <br/> ... for the names above
    r"|<[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/>",  # any self-closing <name .../>: never ordinary text
    re.IGNORECASE,
)


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
            yield _article(doc, path, stats), str(path), doc["line"]
            doc = None
        elif doc is not None:
            doc["body"].append((n, stripped))
        elif stripped:
            stats.add("text_outside_doc", str(path), n, stripped[:60])
    if doc is not None:
        stats.add(
            "unclosed_doc",
            str(path),
            doc["line"],
            f"id={doc['id']!r} has no </doc> before the end of the file",
        )


def strip_tags(line: str) -> str:
    """``line`` without the MediaWiki/HTML tags named in ``TAG_NAMES``, whitespace collapsed.

    >>> strip_tags('Q. text<br>more <span id="x" /> and a < b')
    'Q. text more and a < b'
    """
    return normalize_ws(_TAG.sub(" ", line))


def _article(doc: dict, path: Path, stats: ReadStats) -> Article:
    lines = []
    for n, raw in doc["body"]:
        line = normalize_ws(raw)
        tags = [m.group() for m in _TAG.finditer(line)]
        if tags:
            line = strip_tags(line)
            reason = "html_tags" if line else "markup_only_line"
            stats.add(reason, str(path), n, " ".join(tags)[:60])
        if line:
            lines.append(line)
    title = doc["title"] or (lines[0] if lines else "")
    if lines and lines[0].casefold() == normalize_ws(title).casefold():
        lines = lines[1:]
    return Article(id=doc["id"], title=title, paragraphs=with_headings(lines, rule="wikiextractor"))
