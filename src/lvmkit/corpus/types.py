"""The records that flow out of the corpus stage."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Paragraph:
    text: str
    heading: str | None = None  # the section heading this paragraph sits under (metadata, never a chunk)


@dataclass(frozen=True)
class Article:
    id: str  # stable id from the source (wiki page id, JSONL id, file name, ...)
    title: str
    paragraphs: tuple[Paragraph, ...] = field(default_factory=tuple)
    label: str | None = None  # e.g. the embedded corpus's `topic`


@dataclass(frozen=True)
class Chunk:
    article_id: str
    title: str
    chunk_index: int  # 0..n-1, contiguous within the article
    paragraph_index: int
    heading: str | None
    text: str
    label: str | None = None
