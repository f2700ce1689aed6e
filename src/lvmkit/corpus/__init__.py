"""Corpus stage: read a corpus into ``Article`` records, split text into sentences, cut articles into chunks.

from lvmkit.corpus import ReadStats, make_chunker, read_corpus

stats = ReadStats()
chunker = make_chunker("sentence")
for article in read_corpus("embedded", stats=stats):
    for chunk in chunker.chunk(article):
        ...
print(stats.summary())
"""

from lvmkit.corpus.chunking import Chunker, make_chunker
from lvmkit.corpus.readers import (
    FORMATS,
    Issue,
    ReadStats,
    corpus_source_hash,
    detect_format,
    embedded_corpus_path,
    read_corpus,
    source_files,
)
from lvmkit.corpus.segment import DEFAULT_SEGMENTER, SEGMENTERS, split_sentences
from lvmkit.corpus.types import Article, Chunk, Paragraph

__all__ = [
    "FORMATS",
    "Article",
    "Chunk",
    "Chunker",
    "DEFAULT_SEGMENTER",
    "Issue",
    "Paragraph",
    "ReadStats",
    "SEGMENTERS",
    "corpus_source_hash",
    "detect_format",
    "embedded_corpus_path",
    "make_chunker",
    "read_corpus",
    "source_files",
    "split_sentences",
]
