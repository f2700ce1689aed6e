"""Opening corpus files: transparent decompression, line-by-line UTF-8 decoding that counts bad bytes."""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from lvmkit.corpus.readers.stats import ReadStats
from lvmkit.errors import CorpusError

_OPENERS: dict[str, Callable[..., IO[bytes]]] = {".bz2": bz2.open, ".gz": gzip.open, ".xz": lzma.open}
COMPRESSED_SUFFIXES = tuple(_OPENERS)


def base_suffix(path: Path) -> str:
    """The suffix that names the format, under any compression suffix: ``a.jsonl.gz`` -> ``.jsonl``."""
    name = path.name[: -len(path.suffix)] if path.suffix in _OPENERS else path.name
    return Path(name).suffix.lower()


def base_stem(path: Path) -> str:
    """The name without compression and format suffixes: ``notes/intro.txt.gz`` -> ``intro``."""
    name = path.name[: -len(path.suffix)] if path.suffix in _OPENERS else path.name
    return Path(name).stem


def open_binary(path: Path) -> IO[bytes]:
    """Open for reading bytes, decompressing .bz2 / .gz / .xz by suffix."""
    try:
        return _OPENERS.get(path.suffix, open)(path, "rb")
    except OSError as e:
        raise CorpusError(f"cannot open {path}: {e.strerror or e}") from e


def iter_lines(path: Path, stats: ReadStats) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` with the newline removed, streaming.

    A line that is not valid UTF-8 is decoded with U+FFFD in place of the bad bytes and counted as
    ``bad_utf8`` (file and line kept in ``stats``). A truncated or corrupt compressed file raises
    CorpusError naming the file and the last good line.
    """
    n = 0
    try:
        with open_binary(path) as fh:
            for n, raw in enumerate(fh, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    text = raw.decode("utf-8", errors="replace")
                    stats.add(
                        "bad_utf8", str(path), n, f"invalid byte at column {e.start}, replaced by U+FFFD"
                    )
                if n == 1:
                    text = text.lstrip("\ufeff")  # a byte-order mark is not text
                yield n, text.rstrip("\r\n")
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise CorpusError(f"{path}: cannot read past line {n}: {e} (a truncated or corrupt file?)") from e


SNIFF_BYTES = 8192  # bytes looked at (after decompression) to tell a binary file from text
_CONTROL = frozenset(range(32)) | {127}
_NOT_CONTROL = bytes(b for b in range(256) if b not in _CONTROL or b in b"\t\n\r\f\b\x1b")


def binary_reason(path: Path) -> str | None:
    """Why ``path`` looks binary (an executable, an image, UTF-16 text...), or None for text.

    Looks at the first ``SNIFF_BYTES`` bytes, decompressed: binary when more than 1% of them are NUL or more
    than 10% are other control bytes (UTF-8 text has neither; tabs, newlines and form feeds are text).
    """
    try:
        with open_binary(path) as fh:
            head = fh.read(SNIFF_BYTES)
    except (OSError, EOFError, lzma.LZMAError, CorpusError):
        return None  # unreadable: the reader reports it with the file and position
    if not head:
        return None
    nul = head.count(0)
    control = len(head.translate(None, _NOT_CONTROL)) - nul  # what is left once text bytes are deleted
    if nul > len(head) // 100 or control > len(head) // 10:
        return f"{nul} NUL and {control} other control bytes in its first {len(head)} bytes"
    return None


def first_nonempty_line(path: Path, max_lines: int = 50) -> str | None:
    """The first non-blank line (stripped), looking at most ``max_lines`` lines; None if there is none."""
    try:
        with open_binary(path) as fh:
            for i, raw in enumerate(fh):
                if i >= max_lines:
                    break
                text = raw.decode("utf-8", errors="replace").strip().lstrip("\ufeff")
                if text:
                    return text
    except (OSError, EOFError, lzma.LZMAError):
        return None  # undecodable: the format cannot be sniffed from it
    return None
