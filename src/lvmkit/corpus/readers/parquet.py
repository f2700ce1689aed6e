"""Parquet corpora (e.g. the wikimedia/wikipedia dump shards): columns ``id``, ``title``, ``text`` and an
optional ``label`` / ``topic``. Read in record batches, so a shard never has to fit in memory. Records map
to articles exactly as in ``records.py``. A file without a text column is an error naming its columns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from lvmkit.corpus.readers.records import LABEL_FIELDS, TEXT_FIELDS, record_to_article
from lvmkit.corpus.readers.stats import ReadStats
from lvmkit.corpus.types import Article
from lvmkit.errors import CorpusError

BATCH_ROWS = 512


def read_file(path: Path, stats: ReadStats) -> Iterator[tuple[Article, str, int]]:
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a corrupt or foreign file
        raise CorpusError(f"cannot read {path} as Parquet: {e}") from e
    names = pf.schema_arrow.names
    if not any(f in names for f in TEXT_FIELDS):
        raise CorpusError(f"{path} has columns {names}; a corpus needs a 'text' column (and 'id', 'title')")
    wanted = [c for c in ("id", "title", *TEXT_FIELDS, *LABEL_FIELDS) if c in names]
    row = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
        for record in batch.to_pylist():
            row += 1
            article = record_to_article(record)
            if article is None:
                stats.add("bad_record", str(path), row, "text is null")
                continue
            yield article, str(path), row
