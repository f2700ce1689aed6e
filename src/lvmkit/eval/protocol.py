"""The two evaluation protocols, and the one place that says which candidates each one searches.

    open        the document being continued is unknown: the candidates are the WHOLE bank (the window's own
                context rows excluded). Every number lvmkit reports is ``open`` unless it says otherwise.
    in-article  the document is known: the candidates are that article's chunks outside the context. This is
                a much easier task (an article has ~100 chunks, the bank ~200k) and its numbers are never
                comparable with, nor mixed into, ``open`` ones.

Features that use article identity or position (``ARTICLE_FEATURES``: same article, the +1 gap from the last
context chunk) describe the answer's location, not its content; under ``open`` they are refused
(``check_features`` raises ``ProtocolError``), because a predecessor system inflated its "open retrieval"
numbers exactly that way. Every result, table, metrics.json and report carries its protocol's name.

    search(protocol, bank, queries, articles, exclude, k, index=si, nprobe=64) -> (scores, ids)
"""

from __future__ import annotations

import numpy as np

from lvmkit.errors import ConfigError

OPEN = "open"
IN_ARTICLE = "in-article"
PROTOCOLS = (OPEN, IN_ARTICLE)

# feature name -> what it reads; any of these in an ``open`` pipeline is refused
ARTICLE_FEATURES: dict[str, str] = {
    "same_article": "1 when the candidate is from the article being continued",
    "gap": "candidate row minus the last context row (position in the article), 0 for other articles",
    "next": "1 when the candidate is the chunk right after the last context chunk (+1 gap)",
}

DESCRIPTION = {
    OPEN: "open: the whole bank is searched, the article unknown",
    IN_ARTICLE: "in-article: the article is known, candidates are its chunks outside the context",
}


class ProtocolError(ConfigError):
    """Something was asked for that the chosen protocol does not allow (or protocols were mixed)."""


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of ``PROTOCOLS``; else ProtocolError listing them."""
    if protocol not in PROTOCOLS:
        raise ProtocolError(f"protocol {protocol!r} is not known; allowed: {', '.join(PROTOCOLS)}")
    return protocol


def check_features(protocol: str, names, what: str = "features") -> None:
    """Refuse article-identity / position features under ``open`` (they exist only under ``in-article``)."""
    check_protocol(protocol)
    bad = [n for n in names if n in ARTICLE_FEATURES]
    if protocol == OPEN and bad:
        raise ProtocolError(
            f"{what} {', '.join(bad)} use the article's identity or position, which the open protocol does not "
            f"know; drop them or use protocol {IN_ARTICLE!r} (and report those numbers as in-article)"
        )


def check_same_protocol(a: str, b: str, a_what: str, b_what: str) -> None:
    """Refuse mixing two protocols (e.g. a reranker fitted in-article applied to an open evaluation)."""
    if a != b:
        raise ProtocolError(
            f"{a_what} uses protocol {a!r} but {b_what} uses {b!r}; protocols are never mixed: refit or "
            f"evaluate under the same protocol"
        )


def in_article_search(
    bank, queries: np.ndarray, articles: np.ndarray, exclude: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` over each query's own article, ``exclude`` rows ([Q, E], -1 padded) removed.

    Returns (scores [Q, k] float32, -inf padded; ids [Q, k] int64, -1 padded). Queries are grouped by
    article, so one matrix product scores every query of an article against its chunks.
    """
    queries = np.asarray(queries, dtype=np.float32)
    articles = np.asarray(articles, dtype=np.int64)
    n = len(queries)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    ids = np.full((n, k), -1, dtype=np.int64)
    starts = bank.article_starts
    for a in np.unique(articles):
        sel = np.flatnonzero(articles == a)
        lo, hi = int(starts[a]), int(starts[a + 1])
        s = queries[sel] @ bank.get(np.arange(lo, hi)).T  # [n_a, L]
        if exclude is not None:
            ex = np.asarray(exclude, dtype=np.int64)[sel]
            r, c = np.nonzero((ex >= lo) & (ex < hi))
            s[r, ex[r, c] - lo] = -np.inf
        kk = min(k, hi - lo)
        order = np.argsort(-s, axis=1, kind="stable")[:, :kk]
        top = np.take_along_axis(s, order, axis=1)
        scores[sel, :kk] = top
        ids[sel, :kk] = np.where(np.isfinite(top), lo + order, -1)
    return scores, ids


def search(
    protocol: str,
    bank,
    queries: np.ndarray,
    articles: np.ndarray,
    exclude: np.ndarray | None,
    k: int,
    *,
    index=None,
    nprobe: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` candidates of each query under ``protocol``: (scores [Q, k], ids [Q, k] int64, -1 padded).

    open        ``index`` (a SearchIndex; default the bank's own) over the whole bank, ``exclude`` removed
    in-article  exact search over the query's article (``articles``: its article code), ``exclude`` removed
    """
    check_protocol(protocol)
    if protocol == IN_ARTICLE:
        return in_article_search(bank, queries, articles, exclude, k)
    si = index if index is not None else bank.index()
    scores, ids = si.search(queries, k, exclude=exclude, nprobe=nprobe)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape[1] < k:  # a bank smaller than k
        pad = k - ids.shape[1]
        ids = np.concatenate([ids, np.full((len(ids), pad), -1, dtype=np.int64)], axis=1)
        scores = np.concatenate([scores, np.full((len(ids), pad), -np.inf, dtype=np.float32)], axis=1)
    return np.asarray(scores, dtype=np.float32), ids


def describe_candidates(protocol: str, bank_size: int, mean_candidates: float | None = None) -> str:
    """One sentence for a table footer: what the candidates were under this protocol."""
    if protocol == OPEN:
        return f"protocol open: full-bank search over {bank_size} chunks"
    per = f" (mean {mean_candidates:.0f} per query)" if mean_candidates is not None else ""
    return f"protocol in-article: candidates are the article's own chunks outside the context{per}"
