#!/usr/bin/env bash
# Every benchmark behind a figure in README.md, in the order they were run, with the arguments used.
# Run from the repository root on a quiet machine (speed figures are meaningless under other load):
#     bash benchmarks/run_all.sh            # all
#     bash benchmarks/run_all.sh encode     # one step by name
# Results: benchmarks/results/*.json (+ .md tables). The enwiki bank (banks/enwiki) is built by the first step.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
LV=.venv/bin/lvmkit
BANK=banks/enwiki
step() { [ $# -eq 0 ] || [ "$ONLY" = "" ] || [ "$ONLY" = "$1" ]; }
ONLY="${1:-}"

if step bank; then   # 2,000 enwiki articles, sentence chunks, all-MiniLM-L6-v2 (onnx-int8 backend, same space)
  [ -f $BANK/manifest.json ] || $LV ingest ../shared/data/enwiki2015 --out $BANK --limit-articles 2000 --backend onnx-int8
fi
if step segmenters; then $PY benchmarks/bench_segmenters.py; fi
if step encode; then $PY benchmarks/bench_encode.py --n 2000; fi
if step ingest; then
  $PY benchmarks/bench_ingest.py --backend onnx-int8
  # the same sizes without a model: does peak RSS grow outside the encoder?
  $PY benchmarks/bench_ingest.py --backend hash --encoder hash:384 --out benchmarks/results/ingest_hash.json
fi
if step search; then $PY benchmarks/bench_search.py $BANK; fi   # --hnsw adds HNSW (not run for README)
if step windows; then $PY benchmarks/bench_windows_memory.py; fi
if step mamba; then $PY benchmarks/bench_mamba_scan.py; fi
if step throughput; then
  $PY benchmarks/bench_train_throughput.py --bank $BANK --models amn,gru,transformer,mamba --ctx 5 --ctx 100 --steps 10
  $PY benchmarks/bench_train_throughput.py --bank $BANK --models amn,gru,transformer,mamba --ctx 1000 --batch 8 --steps 3 \
      --out benchmarks/results/train_throughput_ctx1000.json
fi
if step quality; then   # same objective for every model: cosine + InfoNCE (tau 0.05, 4,096-target queue)
  LOSS='loss={cos: 1.0, infonce: 1.0, tau: 0.05, queue: 4096}'
  $PY benchmarks/bench_lvm_quality.py --bank $BANK --ctx 5 --epochs 2 --max-train-windows 16000 --max-eval-queries 500 --max-test-queries 3000 \
      --override "$LOSS" --models amn,gru,lstm,transformer,memory_gru,hierarchical_gru,mamba
  $PY benchmarks/bench_lvm_quality.py --bank $BANK --ctx 100 --min-ctx 20 --epochs 2 \
      --max-train-windows 3000 --max-eval-queries 500 --max-test-queries 3000 --override "$LOSS" \
      --models amn,transformer,hierarchical_gru,gru,mamba --out benchmarks/results/lvm_quality_ctx100.json
fi
if step twotower; then $PY benchmarks/bench_twotower.py $BANK --epochs 3 --max-train-pairs 8000 --test-queries 1500; fi
if step report; then $PY benchmarks/render_report.py --smoke; fi
if step cascade; then   # two small runs on the bank (budgets in README), then heads, reranker and cascades, both protocols
  CR=benchmarks/work/cascade_runs
  [ -f $CR/gru/best.pt ] || $LV train configs/gru.yaml --out $CR/gru --set bank=$BANK --set optim.epochs=1 \
      --set data.max_train_windows=20000 --set data.max_eval_queries=500 --set final_eval=false
  [ -f $CR/tt/best.pt ] || $LV train configs/twotower_plain.yaml --out $CR/tt --set bank=$BANK --set data.ctx=20 \
      --set optim.epochs=1 --set data.max_train_windows=6000 --set data.max_eval_queries=500 \
      --set model.kwargs.hidden=128 --set twotower.memory=20000 --set final_eval=false
  $PY benchmarks/bench_cascade.py --bank $BANK --lvm $CR/gru --twotower $CR/tt --work benchmarks/work/cascade \
      --queries 1000 --rerank-train 1000 --latency-n 100 --lanes-from "${QS:-quickstart_out}/bank"  # topic labels
fi
if step serve; then   # loopback load (1/8/32 clients, direct vs --batch-search), 10-minute RSS soak; IVF nprobe 64 in a mirror of the bank
  $PY benchmarks/bench_serve.py $BANK --run baseline:exp_weighted --requests 300 --phase-seconds 45 --soak-seconds 600
  # the same at 32 clients after the keep-alive change, and a 5-minute soak with fewer malloc arenas:
  $PY benchmarks/bench_serve.py $BANK --run baseline:exp_weighted --concurrency 32 --soak-seconds 0 --faiss-per-thread 0 \
      --out benchmarks/results/serve_keepalive.json
  MALLOC_ARENA_MAX=2 $PY benchmarks/bench_serve.py $BANK --run baseline:exp_weighted --modes direct --concurrency 8 \
      --requests 50 --phase-seconds 20 --soak-seconds 300 --faiss-per-thread 0 --out benchmarks/results/serve_soak_arena2.json
fi
QS="${QS:-quickstart_out}"   # `lvmkit quickstart --out $QS`: the embedded-corpus bank (topic labels) and its amn run
if step lanes; then   # lane classifier on the quickstart bank's topics; skew, per-lane Hit@5, lane rerank (val-chosen weight)
  $PY benchmarks/bench_lanes.py --labelled $QS/bank --bank $QS/bank --run $QS/runs/amn --work /tmp/lanes-bench
  # the classifier README reports: all 10,033 labelled leads (12 topics)
  [ -f banks/embedded/manifest.json ] || $LV ingest embedded --out banks/embedded --backend onnx-int8
  OMP_NUM_THREADS=1 $PY benchmarks/bench_lanes.py --labelled banks/embedded --bank $QS/bank --run $QS/runs/amn \
      --work /tmp/lanes-bench-full --name full
  OMP_NUM_THREADS=1 $PY benchmarks/bench_lanes.py --labelled banks/embedded --bank $BANK --reuse --work /tmp/lanes-bench-full \
      --name enwiki --ctx 5 --min-ctx 5 --queries 2000
fi
if step experts; then   # lane experts (16, top-2) vs the same amn backbone, ctx 5, val split
  OMP_NUM_THREADS=1 $PY benchmarks/bench_experts.py --bank $QS/bank --backbone amn --ctx 5 --epochs 2 --max-train-windows 6000
  OMP_NUM_THREADS=1 $PY benchmarks/bench_experts.py --bank $QS/bank --backbone amn --ctx 5 --epochs 4 --warmup 20 \
      --runs /tmp/experts-bench-long --out benchmarks/results/experts_long.json
fi
