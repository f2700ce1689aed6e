"""The retrieval cascade: a retriever, then stages that each reorder the previous candidates and keep fewer.

config    CascadeConfig (YAML, pydantic): bank, protocol, split, index / nprobe, the stages in order
stages    Stage protocol (candidates in -> fewer candidates out) and retrieve, lvm_rerank, reranker, lane_rerank;
          build_stages loads and checks every model before anything runs
evaluate  evaluate_cascade: per-stage Contain@K, R@1/5/10, MRR@10, Eff@5, batch-1 latency per stage and in
          total (encoder excluded), an ablation without each stage, the baselines, gates (`lvmkit eval CASCADE.yaml`)
"""
