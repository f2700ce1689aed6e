"""Record-shaped corpora: JSON Lines, JSON documents and (via ``parquet.py``) Parquet.

A record is a mapping in the wikimedia/wikipedia dump schema: ``id``, ``title``, ``text``; an optional
``label`` (or ``topic``) becomes the article label. For the embedded corpus's schema the text may be in
``extract`` instead of ``text``. Missing ``id`` falls back to the JSON document's key, then the title;
missing ``title`` falls back to the id. A record without text (or a JSON line that does not parse) is
skipped and counted as ``bad_record``; a record whose text is only whitespace is an ``empty_article``.

The text becomes paragraphs by ``record_blocks`` (newlines and blank lines end paragraphs, soft wraps are
joined) and bare short lines followed by a paragraph are headings ("History" in wikimedia dumps).

``.jsonl`` files (and ``.json`` files whose first line is a whole JSON object) stream line by line. Any
other ``.json`` file is one JSON document, a list of records or a dict ``key -> record`` (the embedded
corpus's layout), and is loaded whole: use JSON Lines or Parquet for large corpora.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

from lvmkit.corpus.readers.io import base_suffix, iter_lines, open_binary
from lvmkit.corpus.readers.stats import ReadStats
from lvmkit.corpus.readers.text import record_blocks, with_headings
from lvmkit.corpus.types import Article
from lvmkit.errors import CorpusError

TEXT_FIELDS = ("text", "extract")
LABEL_FIELDS = ("label", "topic")


def record_to_article(record: Mapping, key: str | None = None) -> Article | None:
    """The Article for one record, or None when the record has no text field (a ``bad_record``)."""
    text = next((record[f] for f in TEXT_FIELDS if isinstance(record.get(f), str)), None)
    if text is None:
        return None
    title = record.get("title")
    rid = record.get("id")
    rid = str(rid) if rid is not None else (key if key is not None else title)
    title = str(title) if title is not None else str(rid)
    label = next((record[f] for f in LABEL_FIELDS if record.get(f) is not None), None)
    paragraphs = with_headings(record_blocks(text), rule="plain")
    return Article(
        id=str(rid), title=title, paragraphs=paragraphs, label=None if label is None else str(label)
    )


def _is_json_lines(path: Path) -> bool:
    if base_suffix(path) == ".jsonl":
        return True
    with open_binary(path) as fh:
        first = fh.readline().strip()
    try:
        return isinstance(json.loads(first), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def read_file(path: Path, stats: ReadStats) -> Iterator[tuple[Article, str, int | None]]:
    if _is_json_lines(path):
        yield from _read_lines(path, stats)
    else:
        yield from read_document(path, stats)


def _read_lines(path: Path, stats: ReadStats) -> Iterator[tuple[Article, str, int]]:
    for n, line in iter_lines(path, stats):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            stats.add("bad_record", str(path), n, f"not JSON: {e.msg} at column {e.colno}")
            continue
        article = record_to_article(record) if isinstance(record, dict) else None
        if article is None:
            stats.add("bad_record", str(path), n, f"no text field (one of {', '.join(TEXT_FIELDS)})")
            continue
        yield article, str(path), n


def read_document(path: Path, stats: ReadStats) -> Iterator[tuple[Article, str, None]]:
    """One JSON document: a list of records, or a dict key -> record, in file order."""
    try:
        with open_binary(path) as fh:
            doc = json.loads(fh.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path} is neither JSON Lines nor a JSON document: {e}") from e
    if isinstance(doc, dict):
        items = [(str(k), v) for k, v in doc.items()]
    elif isinstance(doc, list):
        items = [(None, v) for v in doc]
    else:
        raise CorpusError(
            f"{path}: a JSON corpus must be a list of records or a dict of records, not {type(doc).__name__}"
        )
    for i, (key, record) in enumerate(items):
        article = record_to_article(record, key) if isinstance(record, dict) else None
        if article is None:
            where = f"record {key!r}" if key is not None else f"record #{i}"
            stats.add(
                "bad_record", str(path), None, f"{where} has no text field (one of {', '.join(TEXT_FIELDS)})"
            )
            continue
        yield article, str(path), None
