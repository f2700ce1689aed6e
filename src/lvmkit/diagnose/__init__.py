"""Diagnostics: catch the failure modes this field keeps hitting, before and after training.

    bank    is the vector space usable? norms, anisotropy (mean cosine of random pairs), near duplicates,
            chunks per article                                       -> diagnose_bank(bank)
    data    preflight of a run config or a pairs directory: counts and shapes, article-disjointness,
            leakage, same-article negatives, curriculum, content hashes  -> preflight(config_or_pairs)
    model   postmortem of a checkpoint: separation margin, copy-last collapse, constant predictions,
            same-article negatives                                   -> diagnose_target(run, bank)

Each returns a ``Diagnosis``: a list of ``Finding`` (pass / warn / fail / info, the number, the threshold,
what to do) that saves itself as JSON.
"""

from lvmkit.diagnose.bank import diagnose_bank
from lvmkit.diagnose.data import Preflight, preflight, same_article_share
from lvmkit.diagnose.findings import STATUSES, Diagnosis, Finding, info, judge
from lvmkit.diagnose.model import diagnose_model, diagnose_target

__all__ = [
    "STATUSES",
    "Diagnosis",
    "Finding",
    "Preflight",
    "diagnose_bank",
    "diagnose_model",
    "diagnose_target",
    "info",
    "judge",
    "preflight",
    "same_article_share",
]
