"""What a read skipped or repaired, so that no input is ever lost silently.

Every reader reports problems through ``ReadStats.add(reason, file, line, detail)``. The counts go into the
bank manifest (``CorpusInfo.skipped``) and ``summary()`` gives the one line the CLI prints. The first
``max_examples`` problems are kept with their file and line and also logged as warnings on the
``lvmkit.corpus`` logger, so even a caller that passes no ``ReadStats`` sees them.

Reasons used by the readers:

    skipped (the content is not yielded)
      empty_article     an article with no paragraph text
      unclosed_doc      a WikiExtractor ``<doc>`` without ``</doc>`` (before the next ``<doc>`` or end of file)
      text_outside_doc  a non-empty line outside any article (WikiExtractor / WikiText)
      bad_record        a JSON line that does not parse, or a record without text
      markup_only_line  a WikiExtractor body line that was nothing but HTML tags (``</dl>``, ``<br>``)
      binary_file       a file that is not text (NUL or control bytes: an executable, an image, UTF-16)
    repaired (the content is yielded, changed)
      bad_utf8          a line with invalid UTF-8; the bad bytes became U+FFFD
      html_tags         a WikiExtractor body line with HTML tags; the tags were removed, its text kept
      long_chunk_split  a chunk longer than the chunker's max_chars was cut at spaces into several chunks
                        (counted by the chunker when it is given the stats)
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("lvmkit.corpus")

REPAIRED = frozenset({"bad_utf8", "html_tags", "long_chunk_split"})


@dataclass(frozen=True)
class Issue:
    file: str
    line: int | None
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class ReadStats:
    """Counts of what ``read_corpus`` read, skipped and repaired; pass one in to inspect it afterwards."""

    max_examples: int = 20
    files: int = 0  # input files opened
    articles: int = 0  # articles yielded
    counts: Counter = field(default_factory=Counter)  # reason -> number of occurrences
    examples: list[Issue] = field(default_factory=list)  # the first max_examples issues, in read order

    def add(self, reason: str, file: str, line: int | None = None, detail: str = "") -> None:
        self.counts[reason] += 1
        issue = Issue(str(file), line, reason, detail)
        if len(self.examples) < self.max_examples:
            self.examples.append(issue)
            log.warning("corpus: %s", issue)
            if len(self.examples) == self.max_examples:
                log.warning("corpus: further problems are counted in ReadStats but not logged")

    @property
    def skipped(self) -> dict[str, int]:
        """Counts of the reasons that dropped content (what the bank manifest records as skipped)."""
        return {r: n for r, n in sorted(self.counts.items()) if r not in REPAIRED}

    @property
    def repaired(self) -> dict[str, int]:
        return {r: n for r, n in sorted(self.counts.items()) if r in REPAIRED}

    def as_dict(self) -> dict:
        return {
            "files": self.files,
            "articles": self.articles,
            "skipped": self.skipped,
            "repaired": self.repaired,
            "examples": [str(i) for i in self.examples],
        }

    def summary(self) -> str:
        """One line, e.g. ``read 120 articles from 3 files; skipped: 2 empty_article; repaired: 1 bad_utf8``."""
        parts = [f"read {self.articles} articles from {self.files} file{'s' if self.files != 1 else ''}"]
        for name, group in (("skipped", self.skipped), ("repaired", self.repaired)):
            if group:
                parts.append(f"{name}: " + ", ".join(f"{n} {r}" for r, n in group.items()))
        if self.examples:
            parts.append(f"first: {self.examples[0]}")
        return "; ".join(parts)
