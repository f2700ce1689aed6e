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
detached() {   # detached() RUN_DIR CONFIG ARGS...: a --detach training run, resumed or reused, waited for
  local run=$1 cfg=$2; shift 2
  while kill -0 "$(cat $run/train.pid 2>/dev/null)" 2>/dev/null; do sleep 20; done   # already running
  if ! grep -qsE '"state": "(finished|early_stopped)"' $run/status.json; then
    if [ -f $run/last.pt ]; then $LV train --resume --out $run --detach; else $LV train $cfg --out $run --detach "$@"; fi
    while kill -0 "$(cat $run/train.pid 2>/dev/null)" 2>/dev/null; do sleep 20; done
  fi
  grep -qsE '"state": "(finished|early_stopped)"' $run/status.json || { echo "run $run did not finish"; exit 1; }
}

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
if step exact; then $PY benchmarks/bench_exact.py banks/enwiki8k --queries 256 --k 60; fi   # session 4, under load
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
if step bigbank; then   # issue #10 on the >= 600k-chunk bank (session 4): ~75 min of CPU after the ingest
  BIG=banks/enwiki8k   # 8,000 articles; the ingest resumes, so it can be built across sessions (~1 h idle)
  [ -f $BIG/manifest.json ] || $LV ingest ../shared/data/enwiki2015 --out $BIG --limit-articles 8000 --backend onnx-int8
  W=benchmarks/work/lvm_big
  # the one LVM config of this step (val chose it on the quickstart and the 216k bank: anchor mix, InfoNCE-led
  # objective, low lr); from_start=false so best.pt is the best TRAINED epoch (the anchor is the blend row)
  CFG=(--set model.delta=false --set model.kwargs.anchor=mix --set "loss={cos: 0.1, infonce: 1.0, tau: 0.05}"
       --set optim.lr=0.0001 --set optim.warmup_steps=200 --set data.batch_size=256
       --set early_stopping.from_start=false)
  SETS=(); for ((i = 1; i < ${#CFG[@]}; i += 2)); do SETS+=(--override "${CFG[$i]}"); done
  # ctx 5: amn on ALL train windows (701,267) x 2 epochs = also the largest point of the size sweep below
  detached $W/ctx5/amn configs/amn.yaml --set bank=$BIG --set data.ctx=5 --set optim.epochs=2 \
      --set final_eval=false --set data.max_eval_queries=2000 --set data.min_ctx=5 "${CFG[@]}"
  # the final table: the test split read once, 10,000 windows, every baseline, every K, paired CIs
  $PY benchmarks/bench_lvm_quality.py --bank $BIG --ctx 5 --models amn --epochs 2 --min-ctx 5 \
      --max-eval-queries 2000 --max-test-queries 10000 --work $W "${SETS[@]}" --out benchmarks/results/lvm_big_ctx5.json
  # scaling in training windows: the same config at 16k / 64k / 250k windows + the full run above (linked)
  mkdir -p benchmarks/work/scaling_big && ln -sfn ../lvm_big/ctx5/amn benchmarks/work/scaling_big/ctx5-n1000000
  $PY benchmarks/bench_scaling.py --bank $BIG --model amn "${SETS[@]}" --sizes 16000,64000,250000,1000000 \
      --ctxs "" --epochs 2 --max-eval-queries 500 --max-test-queries 1000 \
      --work benchmarks/work/scaling_big --out benchmarks/results/scaling_big.json
  # ctx 100: amn, 100k windows (>= 20 real context chunks, left-padded) x 2 epochs; 10,000 test windows (session 6;
  # session 4's table had 5,000, for time; the checkpoint and every setting are the same)
  $PY benchmarks/bench_lvm_quality.py --bank $BIG --ctx 100 --min-ctx 20 --models amn --epochs 2 \
      --max-train-windows 100000 --max-eval-queries 1000 --max-test-queries 10000 --work $W "${SETS[@]}" \
      --out benchmarks/results/lvm_big_ctx100.json
  # two-tower: plain vs the percentile curriculum (windows calibrated to the encoder), kept counts in the JSON
  $PY benchmarks/bench_twotower.py $BIG --epochs 3 --max-train-pairs 6000 --test-queries 2000 --anchor blend \
      --schedule "1:none;2:8@p90-p99;3:16@p95-p99.5" --out benchmarks/results/twotower_big.json
  # session 6: the plain recipe + in-article negatives (target+1, weight 0.2): twotower_big_inarticle.json. Its
  # blend was tuned afresh on val pairs (w=0.2, alpha=0.3), so its anchor differs from the plain tower's
  $PY benchmarks/bench_twotower.py $BIG --epochs 3 --max-train-pairs 6000 --test-queries 2000 --anchor blend \
      --runs plain --inarticle-offsets 1 --inarticle-weight 0.2 --out benchmarks/results/twotower_big.json
  # session 6: mining with per-query rank windows (every pair fills), beside the same plain tower (linked, so
  # the table reuses its anchor and checkpoint)
  mkdir -p benchmarks/work/twotower_big_rank
  ln -sfn ../twotower_big/twotower_plain benchmarks/work/twotower_big_rank/twotower_plain
  $PY benchmarks/bench_twotower.py $BIG --epochs 3 --max-train-pairs 6000 --test-queries 2000 --anchor blend \
      --schedule "1:none;2-3:8@r10-r50" --out benchmarks/results/twotower_big_rank.json
  # scaling in context length (session 5): ctx 5 / 20 / 100 / 500 at 16k windows; blend tuned on 300 val windows
  $PY benchmarks/bench_scaling.py --bank $BIG --model amn "${SETS[@]}" --sizes "" --ctxs 5,20,100,500 \
      --ctx-train-windows 16000 --epochs 2 --max-eval-queries 300 --max-test-queries 1000 \
      --work benchmarks/work/scaling_big --out benchmarks/results/scaling_big_ctx.json
  # its ctx-5 point again, the blend tuned on 1,000 val windows (300 gave a weak blend)
  $PY benchmarks/bench_scaling.py --bank $BIG --model amn "${SETS[@]}" --sizes "" --ctxs 5 \
      --ctx-train-windows 16000 --epochs 2 --max-eval-queries 1000 --max-test-queries 1000 \
      --work benchmarks/work/scaling_big --out benchmarks/results/scaling_big_ctx5_val1000.json
  # lever at scale (val only): the 250k sweep config + in-article negatives (target+1, weight 0.2)
  detached $W/ctx5/amn_neg configs/amn.yaml --set bank=$BIG --set data.ctx=5 --set optim.epochs=2 \
      --set final_eval=false --set data.max_eval_queries=500 --set data.min_ctx=5 --set data.max_train_windows=250000 \
      "${CFG[@]}" --set "loss={cos: 0.1, infonce: 1.0, tau: 0.05, inarticle_offsets: [1], inarticle_weight: 0.2}"
fi
if step biglevers; then   # sessions 5-6: more levers on the 901,739-chunk bank, all on VAL (the test split is not read)
  BIG=banks/enwiki8k; L=benchmarks/work/levers_big
  # (1) in-article negatives at 250k windows: the `detached $W/ctx5/amn_neg` run of the bigbank step above.
  # (2) other families and a wider amn, each beside the 250k-window amn of the size sweep: the same settings,
  #     anchor started where that run's val tuning put it (w=0.2, alpha=0.2), 250k windows x 2 epochs
  CFG=(--set model.delta=false --set model.kwargs.anchor=mix --set model.kwargs.anchor_w=0.2 --set model.kwargs.anchor_alpha=0.2
       --set "loss={cos: 0.1, infonce: 1.0, tau: 0.05}" --set optim.lr=0.0001 --set optim.warmup_steps=200
       --set data.batch_size=256 --set early_stopping.from_start=false)
  A=(--set bank=$BIG --set data.ctx=5 --set optim.epochs=2 --set final_eval=false --set data.max_eval_queries=500
     --set data.min_ctx=5 --set data.max_train_windows=250000 "${CFG[@]}")
  # session 6: a wider amn (hidden 512: 1,970,948 parameters against 986,628), the capacity lever
  detached $L/amn_250k_h512 configs/amn.yaml "${A[@]}" --set model.kwargs.hidden=512
  # (3) the LVM trained by the two-tower task (doc tower identity: its query tower IS an LVM), so it sees a
  #     50,000-vector memory bank of negatives, then the same + mined negatives. amn, anchor mix at the blend val
  #     chose for the ctx-5 table (w=0, alpha=0.5); 32,000 train windows x 3 epochs, best by val MRR@10.
  TL=(--set bank=$BIG --set data.ctx=5 --set data.min_ctx=5 --set data.batch_size=256
      --set data.max_train_windows=32000 --set data.max_eval_queries=1000 --set final_eval=false
      --set model.name=amn --set "model.kwargs={anchor: mix, anchor_w: 0.0, anchor_alpha: 0.5, hidden: 256, heads: 4, dropout: 0.1}"
      --set twotower.pair_stride=1 --set twotower.pairs_per_article=null
      --set optim.lr=0.0001 --set optim.warmup_steps=200 --set optim.epochs=3
      --set early_stopping.metric=val_mrr@10 --set checkpoint_every_steps=100)
  detached $L/amn_tower_plain configs/twotower_plain.yaml "${TL[@]}"
  # session 6: + mined negatives (percentile windows over the fixed top-100 reference; two mining passes)
  detached $L/amn_tower_mined configs/twotower_plain.yaml "${TL[@]}" --set "twotower.schedule=1:none;2-3:8@p90-p99"
  # gru and mamba (session 5 stopped mamba after epoch 1 for time; session 6 resumed it)
  for m in gru mamba; do detached $L/${m}_250k configs/$m.yaml "${A[@]}"; done
  # all of them beside every baseline on 1,000 val windows (the ctx-5 table run's val sample; paired CIs)
  W=benchmarks/work/lvm_big
  $PY benchmarks/bench_levers.py --bank $BIG --models "" --run amn_701k=$W/ctx5/amn \
      --run amn_250k=benchmarks/work/scaling_big/ctx5-n250000 --run amn_250k_h512=$L/amn_250k_h512 \
      --run amn_250k_inarticle=$W/ctx5/amn_neg --run gru_250k=$L/gru_250k --run mamba_250k=$L/mamba_250k \
      --run amn_tower_memory=$L/amn_tower_plain --run amn_tower_mined=$L/amn_tower_mined --max-queries 1000 \
      --out benchmarks/results/levers_big_ctx5.json
  # session 6: memory_gru at the same budget (250k windows x 2), beside amn_250k on the same 1,000 val windows
  detached $L/memory_gru_250k configs/memory_gru.yaml "${A[@]}"
  $PY benchmarks/bench_levers.py --bank $BIG --models "" --run amn_250k=benchmarks/work/scaling_big/ctx5-n250000 \
      --run memory_gru_250k=$L/memory_gru_250k --max-queries 1000 --out benchmarks/results/levers_big_memory_gru.json
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
