"""Post-training drop-ins fitted on a trained run (they never change its weights).

align       alignment heads: ridge (alpha chosen on val) and orthogonal Procrustes maps from a run's predictions
            to the true next chunk; stored in RUN/heads/ with provenance; ``lvmkit align``, ``lvmkit eval --head``
features    candidate features of a top-K pool, per protocol (article-identity features under in-article only)
reranker    a small learned reranker (logistic regression or histogram gradient boosting) over those features;
            ``lvmkit rerank fit``
"""
