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
if step levers; then   # issue #10: anchors and in-article negatives, chosen on VAL (the test split is not read)
  # the quickstart's configs on the quickstart bank (lvmkit quickstart --out /work/qs), a small budget; OLD = the
  # quickstart objective before issue #10 (the base config now has the winning one: cos 0.1 + InfoNCE 1.0, lr 1e-4)
  OLD='loss={cos: 1.0, infonce: 0.05, tau: 0.05};optim.lr=0.001;early_stopping.from_start=false'
  NCE='loss={cos: 0.1, infonce: 1.0, tau: 0.05};early_stopping.from_start=false'
  $PY benchmarks/bench_levers.py --bank /work/qs/bank --base quickstart --models gru --epochs 3 \
      --max-train-windows 4000 --tag qs --out benchmarks/results/levers_quickstart_gru.json \
      --variant "delta=model.delta=true;$OLD" --variant "blend=model.delta=false;model.kwargs.anchor=blend;$OLD" \
      --variant "mix=model.delta=false;model.kwargs.anchor=mix;$OLD" \
      --variant "mix_nce=model.delta=false;model.kwargs.anchor=mix;$NCE;optim.lr=0.001" \
      --variant "mix_nce_lr=model.delta=false;model.kwargs.anchor=mix;$NCE;optim.lr=0.0001"
  $PY benchmarks/bench_levers.py --bank /work/qs/bank --base quickstart --models amn --epochs 3 \
      --max-train-windows 4000 --tag qs --out benchmarks/results/levers_quickstart_amn.json \
      --variant "mix_nce_lr=model.delta=false;model.kwargs.anchor=mix;loss={cos: 0.1, infonce: 1.0, tau: 0.05};optim.lr=0.0001"
  # enwiki ctx 5 (216k chunks): amn anchored at blend / mix, mix with in-article negatives (+1, +2, -1 at 0.5)
  LOSS='loss={cos: 0.1, infonce: 1.0, tau: 0.05}'
  NEG='loss={cos: 0.1, infonce: 1.0, tau: 0.05, inarticle_offsets: [1, 2, -1], inarticle_weight: 0.5}'
  $PY benchmarks/bench_levers.py --bank $BANK --models amn --ctx 5 --epochs 2 --max-train-windows 5000 \
      --override "data.max_eval_queries=500" --override "model.delta=false" --override "optim.lr=0.0003" \
      --override "optim.warmup_steps=10" --override "$LOSS" \
      --tag enwiki5 --out benchmarks/results/levers_enwiki_ctx5.json \
      --variant "mix=model.kwargs.anchor=mix" --variant "mix_neg=model.kwargs.anchor=mix;$NEG" \
      --variant "blend=model.kwargs.anchor=blend"
fi
if step scaling; then   # the best config at 4 training-set sizes and 4 context lengths, test split
  $PY benchmarks/bench_scaling.py --bank $BANK --model gru --override "model.delta=false" \
      --override "model.kwargs.anchor=mix" --override "loss={cos: 1.0, infonce: 1.0, tau: 0.05}" \
      --sizes 4000,16000,64000,160000 --ctxs 5,20,100,500 --ctx-train-windows 16000 --epochs 2
fi
if step bigbank; then   # NOT RUN (needs hours on this machine): the issue's >= 600k-chunk bank and 1M windows
  BIG=banks/enwiki8k   # 8,000 articles, ~860k chunks; ingest resumes, so it can be built across sessions
  [ -f $BIG/manifest.json ] || $LV ingest ../shared/data/enwiki2015 --out $BIG --limit-articles 8000 --backend onnx-int8
  for M in gru amn transformer; do   # the best three configs, anchored, >= 1M windows at ctx 5; choose on val
    $LV train configs/$M.yaml --out runs/big_${M}_ctx5 --detach --set bank=$BIG --set model.delta=false \
        --set model.kwargs.anchor=mix --set optim.epochs=5 --set data.max_test_queries=10000
  done
  $PY benchmarks/bench_scaling.py --bank $BIG --model gru --override "model.delta=false" \
      --override "model.kwargs.anchor=mix" --sizes 16000,64000,250000,1000000 --ctxs 5,20,100,500 \
      --ctx-train-windows 250000 --epochs 3 --max-test-queries 10000 --out benchmarks/results/scaling_big.json
  $PY benchmarks/bench_twotower.py $BIG --epochs 10 --max-train-pairs 100000 --test-queries 10000 --anchor mix \
      --schedule "1-3:none;4-7:8@p90-p99;8-10:16@p95-p99.5"
fi
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
