"""The data stage: article-disjoint splits, sequence windows (index views into the bank), batch samplers
that cap windows per article, and two-tower (context, next chunk) pairs.

    split = make_split(bank, ratios=(0.8, 0.1, 0.1), seed=0)      # by a hash of each article id
    print(check_leakage(bank, split).summary())
    train = make_windows(bank, split, "train", ctx=5)             # one int64 per window
    sampler = ArticleCappedBatchSampler(train.article_of_all(), batch_size=32, max_per_article=2)
    for idx in sampler:
        batch = train.batch(idx)                                  # WindowBatch of tensors
"""

from lvmkit.data.pairs import PairSet, make_pairs, rolling_dedup
from lvmkit.data.samplers import ArticleCappedBatchSampler
from lvmkit.data.splits import SPLIT_NAMES, LeakageReport, Split, check_leakage, make_split
from lvmkit.data.windows import WindowBatch, WindowDataset, WindowSet, make_windows

__all__ = [
    "SPLIT_NAMES",
    "ArticleCappedBatchSampler",
    "LeakageReport",
    "PairSet",
    "Split",
    "WindowBatch",
    "WindowDataset",
    "WindowSet",
    "check_leakage",
    "make_pairs",
    "make_split",
    "make_windows",
    "rolling_dedup",
]
