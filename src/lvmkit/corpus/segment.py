"""Sentence segmentation: ``split_sentences(text)`` with a choice of two offline segmenters.

Both backends only *propose cut points*; the sentences are the slices of the input between consecutive
cuts. So no text is ever lost, duplicated or rewritten: joining the sentences with spaces gives back the
input up to whitespace (the chunker's property tests check exactly this).

``fix=True`` (the default) then removes cuts that are obviously wrong, cheaply:

* no whitespace at the cut ("3." | "14", "U.S." | "-based");
* the next piece starts with a lowercase letter ("... e.g." | "the ...");
* the previous piece ends with an abbreviation that never ends an English sentence ("e.g.", "i.e.",
  "Dr.", "St.", "No.", "vs.", ...);
* the previous piece ends with an initial and the next starts uppercase ("J." | "R. R. Tolkien");
* either piece is shorter than 3 characters.

Joining a name's initials back together can leave a real sentence end inside the joined piece ("... wrote
books. J. K." | "Rowling said ..."): then the cut moves to just before the initials instead.

Which backend is the default, and why, is measured by ``benchmarks/bench_segmenters.py`` (results in
``benchmarks/results/segmenters.json``); see DEFAULT_SEGMENTER.
"""

from __future__ import annotations

import functools
import importlib.metadata
import itertools
import re
from collections.abc import Callable

import blingfire

from lvmkit.errors import ConfigError

SEGMENTERS = ("blingfire", "pysbd")
# blingfire + fixes: on 1,000 enwiki paragraphs more than 10x faster than pysbd + fixes with the same error
# counts (benchmarks/results/segmenters.json); pysbd also leaves quoted multi-sentence passages uncut.
DEFAULT_SEGMENTER = "blingfire"
_DISTRIBUTIONS = {"blingfire": "blingfire", "pysbd": "pysbd"}

# Abbreviations that do not end a sentence in encyclopaedic prose (compared case-sensitively).
_LATIN = ("e.g.", "i.e.", "E.g.", "I.e.", "cf.", "Cf.", "vs.", "v.", "viz.")
_DATES = ("ca.", "c.", "fl.", "b.", "d.", "r.")  # circa, floruit, born, died, reigned
_REFERENCES = ("pp.", "p.", "No.", "Nos.", "Vol.", "vol.", "Fig.", "fig.")
_TITLES = ("Dr.", "Mr.", "Mrs.", "Ms.", "Prof.", "Rev.", "Fr.", "Hon.", "Messrs.", "Mme.", "Mlle.")
_PLACES = ("St.", "Mt.", "Ft.")
_RANKS = ("Gen.", "Col.", "Lt.", "Sgt.", "Capt.", "Cmdr.", "Adm.", "Maj.", "Gov.", "Sen.", "Rep.", "Pres.")
NEVER_FINAL = frozenset(_LATIN + _DATES + _REFERENCES + _TITLES + _PLACES + _RANKS)
_INITIAL = re.compile(r"(?:^|[\s(\"'])[A-Z]\.$")
# A run of initials after a sentence end whose "." is not itself an initial's: "books. J. K." -> "J. K."
_TRAILING_INITIALS = re.compile(r"(?<!\b[A-Z])[.!?][\"')\]”’]?\s+((?:[A-Z]\.\s*)+)$")
_LEADING_PUNCT = "(\"'“‘«[{"
MIN_SENTENCE_CHARS = 3


def _blingfire_starts(text: str) -> list[int]:
    _, offsets = blingfire.text_to_sentences_and_offsets(text)
    return [start for start, _ in offsets]


@functools.lru_cache(maxsize=1)
def _pysbd_segmenter():
    try:
        import pysbd
    except ImportError as e:
        raise ConfigError(
            "segmenter 'pysbd' needs the pysbd package (pip install pysbd, or lvmkit[dev]); "
            "the default 'blingfire' needs nothing extra"
        ) from e
    return pysbd.Segmenter(language="en", clean=False)


def _pysbd_starts(text: str) -> list[int]:
    # pysbd returns sentence strings; locate each in the text in order (its char_span mode mislocates
    # repeated sentences). A sentence it rewrote cannot be found and simply yields no cut.
    starts, pos = [], 0
    for sentence in _pysbd_segmenter().segment(text):
        core = sentence.strip()
        i = text.find(core, pos) if core else -1
        if i >= 0:
            starts.append(i)
            pos = i + len(core)
    return starts


_BACKENDS: dict[str, Callable[[str], list[int]]] = {"blingfire": _blingfire_starts, "pysbd": _pysbd_starts}


def check_segmenter(name: str) -> str:
    if name not in _BACKENDS:
        raise ConfigError(f"segmenter {name!r} is not known; choose one of: {', '.join(SEGMENTERS)}")
    return name


def segmenter_version(name: str) -> str:
    """Installed version of the backend's package (recorded in the bank manifest via Chunker.config())."""
    try:
        return importlib.metadata.version(_DISTRIBUTIONS[check_segmenter(name)])
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def sentence_spans(text: str, segmenter: str = DEFAULT_SEGMENTER, fix: bool = True) -> list[tuple[int, int]]:
    """``(start, end)`` character spans of the sentences of ``text``: in order, not overlapping, stripped of
    surrounding whitespace, and together covering every non-whitespace character of ``text``."""
    backend = _BACKENDS[check_segmenter(segmenter)]
    if not text.strip():
        return []
    cuts = sorted({s for s in backend(text) if 0 < s < len(text)})
    bounds = [0, *cuts, len(text)]
    spans = [_strip(text, a, b) for a, b in itertools.pairwise(bounds)]
    spans = [(a, b) for a, b in spans if a < b]
    return _merge_false_splits(text, spans) if fix else spans


def split_sentences(text: str, segmenter: str = DEFAULT_SEGMENTER, fix: bool = True) -> list[str]:
    """The sentences of ``text`` (each a stripped slice of it). See the module docstring for ``fix``."""
    return [text[a:b] for a, b in sentence_spans(text, segmenter, fix)]


def _strip(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and text[a].isspace():
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def is_false_split(prev: str, nxt: str, gap: str) -> bool:
    """Whether a cut between sentence pieces ``prev`` and ``nxt`` (separated by ``gap``) is obviously wrong."""
    if not gap or len(prev) < MIN_SENTENCE_CHARS or len(nxt) < MIN_SENTENCE_CHARS:
        return True
    first = nxt.lstrip(_LEADING_PUNCT)[:1]
    if first.islower():
        return True
    last_word = prev.rsplit(None, 1)[-1].lstrip(_LEADING_PUNCT)
    if last_word in NEVER_FINAL:
        return True
    return bool(_INITIAL.search(prev)) and first.isupper()


def _merge_false_splits(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged = [spans[0]]
    for a, b in spans[1:]:
        pa, pb = merged[-1]
        prev, nxt = text[pa:pb], text[a:b]
        if not is_false_split(prev, nxt, text[pb:a]):
            merged.append((a, b))
            continue
        initials = _TRAILING_INITIALS.search(prev) if nxt[:1].isupper() else None
        if initials is not None:  # the sentence ended before the initials: cut there instead
            cut = pa + initials.start(1)
            merged[-1] = _strip(text, pa, cut)
            merged.append((cut, b))
        else:
            merged[-1] = (pa, b)
    return merged
