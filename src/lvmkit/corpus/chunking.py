"""Cutting articles into chunks, the units that get one vector each.

    chunker = make_chunker("words:64")
    chunks = chunker.chunk(article)      # [Chunk(article_id, title, chunk_index, paragraph_index, ...)]
    manifest_entry = chunker.config()    # {"spec": "words:64", "strategy": "words", "max_words": 64, ...}

Specs:

    sentence   one chunk per sentence (``lvmkit.corpus.segment.split_sentences``)
    words:N    whole sentences packed greedily, in order, while the chunk stays within N words; a single
               sentence longer than N words is a chunk of its own (sentences are never cut)
    paragraph  one chunk per paragraph

Length: no chunk is longer than ``max_chars`` (default 2,000 characters). An encoder reads a window of
tokens (all-MiniLM-L6-v2: 256 word pieces, about 1,000-1,300 characters of English) and silently drops the
rest, so a longer piece (a list glued into one "sentence", a 10 MB line without a full stop) is cut at the
last space before the limit (mid-word only when a stretch has no space) into several chunks, each counted as
``long_chunk_split`` in the ``ReadStats`` passed to ``chunk``. On the embedded corpus the longest sentence
chunk has 809 characters, so the guard changes nothing there.

Boundaries: a chunk never crosses an article, and none of the strategies crosses a paragraph either
(``words:N`` starts a new chunk at every paragraph), so every chunk has one ``paragraph_index`` and one
``heading``. Text: every run of whitespace becomes one space, empty chunks are never emitted, and
``chunk_index`` is 0..n-1 in article order. Nothing is lost: joining an article's chunk texts with
spaces equals joining its paragraphs' whitespace-normalised texts (headings are metadata, not text).
"""

from __future__ import annotations

from dataclasses import dataclass

from lvmkit.corpus.readers.stats import ReadStats
from lvmkit.corpus.readers.text import normalize_ws
from lvmkit.corpus.segment import DEFAULT_SEGMENTER, check_segmenter, segmenter_version, split_sentences
from lvmkit.corpus.types import Article, Chunk
from lvmkit.errors import ConfigError

STRATEGIES = ("sentence", "words", "paragraph")
ALLOWED_SPECS = "'sentence', 'words:N' (N a positive integer, e.g. 'words:64') or 'paragraph'"
DEFAULT_MAX_CHARS = 2000


def split_long(text: str, max_chars: int) -> list[str]:
    """``text`` (whitespace-normalised) in pieces of at most ``max_chars``, cut at the last space in the second
    half of each window (the space is dropped), else hard at ``max_chars``. Linear in ``len(text)``."""
    if len(text) <= max_chars:
        return [text]
    pieces, pos, n = [], 0, len(text)
    while n - pos > max_chars:
        end = pos + max_chars
        cut = text.rfind(" ", pos + max_chars // 2, end + 1)
        if cut == -1:
            pieces.append(text[pos:end])
            pos = end
        else:
            pieces.append(text[pos:cut])
            pos = cut + 1
    if pos < n:
        pieces.append(text[pos:])
    return [p for p in pieces if p]


def pack_sentences(sentences: list[str], max_words: int) -> list[str]:
    """Greedy packing: consecutive sentences joined while the total stays <= max_words words."""
    packed: list[str] = []
    current: list[str] = []
    words = 0
    for sentence in sentences:
        n = len(sentence.split())
        if current and words + n > max_words:
            packed.append(" ".join(current))
            current, words = [], 0
        current.append(sentence)
        words += n
    if current:
        packed.append(" ".join(current))
    return packed


@dataclass(frozen=True)
class Chunker:
    """Build with ``make_chunker(spec)``. ``max_words`` is set only for the ``words`` strategy."""

    strategy: str
    max_words: int | None = None
    segmenter: str = DEFAULT_SEGMENTER
    max_chars: int = DEFAULT_MAX_CHARS

    @property
    def spec(self) -> str:
        return f"words:{self.max_words}" if self.strategy == "words" else self.strategy

    def pieces(self, text: str) -> list[str]:
        """The chunk texts of one paragraph, whitespace-normalised, none empty."""
        text = normalize_ws(text)
        if not text:
            return []
        if self.strategy == "paragraph":
            return [text]
        sentences = split_sentences(text, self.segmenter)
        if self.strategy == "words":
            sentences = pack_sentences(sentences, self.max_words)
        return [s for s in map(normalize_ws, sentences) if s]

    def chunk(self, article: Article, stats: ReadStats | None = None) -> list[Chunk]:
        """The article's chunks; pieces over ``max_chars`` are split and counted in ``stats``."""
        chunks: list[Chunk] = []
        for p_index, paragraph in enumerate(article.paragraphs):
            for text in self._bounded(self.pieces(paragraph.text), article, p_index, stats):
                chunks.append(
                    Chunk(
                        article_id=article.id,
                        title=article.title,
                        chunk_index=len(chunks),
                        paragraph_index=p_index,
                        heading=paragraph.heading,
                        text=text,
                        label=article.label,
                    )
                )
        return chunks

    def _bounded(
        self, pieces: list[str], article: Article, p_index: int, stats: ReadStats | None
    ) -> list[str]:
        out: list[str] = []
        for text in pieces:
            parts = split_long(text, self.max_chars)
            if len(parts) > 1 and stats is not None:
                where = f"article {article.id!r} ({article.title!r}), paragraph {p_index}"
                stats.add("long_chunk_split", where, None, f"{len(text):,} characters -> {len(parts)} chunks")
            out += parts
        return out

    def config(self) -> dict:
        """What the bank manifest records about chunking (enough to reproduce the chunks)."""
        uses_segmenter = self.strategy != "paragraph"
        return {
            "spec": self.spec,
            "strategy": self.strategy,
            "max_words": self.max_words,
            "max_chars": self.max_chars,
            "segmenter": self.segmenter if uses_segmenter else None,
            "segmenter_version": segmenter_version(self.segmenter) if uses_segmenter else None,
            "sentence_fixes": uses_segmenter,
            "crosses_paragraphs": False,
        }


def make_chunker(
    spec: str, segmenter: str = DEFAULT_SEGMENTER, max_chars: int = DEFAULT_MAX_CHARS
) -> Chunker:
    """A Chunker for ``spec`` ('sentence', 'words:N', 'paragraph'); ConfigError names the allowed specs."""
    if not isinstance(spec, str):
        raise ConfigError(f"chunk spec must be a string, one of {ALLOWED_SPECS}; got {spec!r}")
    check_segmenter(segmenter)
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 20:
        raise ConfigError(f"--max-chars must be an integer >= 20 (got {max_chars!r})")
    s = spec.strip().lower()
    if s in ("sentence", "paragraph"):
        return Chunker(strategy=s, segmenter=segmenter, max_chars=max_chars)
    name, sep, n = s.partition(":")
    if name == "words" and sep:
        if n.strip().isdigit() and int(n) > 0:
            return Chunker(strategy="words", max_words=int(n), segmenter=segmenter, max_chars=max_chars)
        raise ConfigError(f"chunk spec {spec!r}: N in 'words:N' must be a positive integer, got {n!r}")
    raise ConfigError(f"chunk spec {spec!r} is not valid; use {ALLOWED_SPECS}")
