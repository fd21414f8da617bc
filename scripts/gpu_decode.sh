#!/usr/bin/env bash
# Decoding's GPU checks and benchmark in one go, on one CUDA GPU (about 7 minutes on an H200):
#   bash scripts/gpu_decode.sh [STAGES...]      STAGES: tests bench trained sweep split (default: the first three)
#   tests    tests/test_decode_gpu.py, compiled kernels: CUDA-graph decoding against full recomputation for every
#            variant, ragged batches, autocast, the decoding kernels against float64 at 33k-41k positions
#   bench    python -m benchmarks.decode: 162M (model=gpt2_162m), random weights, softmax and TDA, batch 1 and 16,
#            caches of 1k ... 32k tokens; and the kernels alone up to 128k
#   trained  trains paper_small with TDA for 1,500 steps (python train.py, into runs/), then decodes with its
#            weights at 32k (model.max_seq_len=32768) beside softmax
#   sweep    the kernels alone at batch 1 and 16, 4k and 32k, at every page size, pages per split and pipeline depth
#            (the split plan; about 1 minute)
#   sweep1   the same sweep at batch 1, 32k, paper_small's heads (TDA 3, softmax 6), with 1 to 8 pages a program
#   split    the kernels alone at paper_small's heads (TDA 3, softmax 6) and the 162M's (SPLIT_HEADS="6 12"), batch
#            1 and 16, 4k and 32k, with each launch's device time (partials and combine, profiled)
# Logs and Markdown tables go to $OUT/decode (default gpu_logs/decode); the tables are printed again at the end.
set -o pipefail
log_dir=${OUT:-gpu_logs}/decode
mkdir -p "$log_dir"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
stages=${*:-tests bench trained}
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$log_dir/gpu.log"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$log_dir/gpu.log"
for stage in $stages; do
    start=$SECONDS
    case $stage in
        tests) timeout 110 python3 -m pytest -q -rfE -n 4 -p no:cacheprovider --timeout=100 \
                   tests/test_decode_gpu.py 2>&1 | tee "$log_dir/tests.log" || status=1 ;;
        bench) timeout 150 python3 -m benchmarks.decode --steps 32 --warmup 4 \
                   --kernel-contexts 1024 4096 16384 32768 131072 \
                   --out "$log_dir/bench_162m.md" --json "$log_dir/bench_162m.json" 2>&1 \
                   | tee "$log_dir/bench_162m.log" || status=1 ;;
        trained) timeout 210 python3 -m benchmarks.decode --stages e2e --contexts 32768 --steps 32 --warmup 4 \
                   --train-first "+experiment=paper_small attention=tda trainer.max_steps=1500 \
trainer.eval_every=1500 trainer.checkpoint_every=1500" \
                   --out "$log_dir/bench_trained.md" --json "$log_dir/bench_trained.json" 2>&1 \
                   | tee "$log_dir/bench_trained.log" || status=1 ;;
        sweep) timeout 300 python3 -m benchmarks.decode --stages kernel --kernel-contexts 4096 32768 --sweep \
                   --sweep-pages 32 64 128 --sweep-splits 2 4 8 16 --sweep-stages 1 2 3 4 \
                   --out "$log_dir/sweep.md" --json "$log_dir/sweep.json" 2>&1 | tee "$log_dir/sweep.log" || status=1 ;;
        sweep1) timeout 200 python3 -m benchmarks.decode --stages kernel --kernel-batches 1 --kernel-contexts 32768 \
                   --kernel-heads 6 --sweep --sweep-pages 32 64 128 --sweep-splits 1 2 3 4 8 --sweep-stages 1 2 3 \
                   --out "$log_dir/sweep1.md" --json "$log_dir/sweep1.json" 2>&1 | tee "$log_dir/sweep1.log" \
                   || status=1 ;;
        split) for heads in ${SPLIT_HEADS:-6 12}; do
                   timeout 120 python3 -m benchmarks.decode --stages kernel --kernel-contexts 4096 32768 \
                       --kernel-heads $heads --kernel-split --out "$log_dir/split_h$heads.md" \
                       --json "$log_dir/split_h$heads.json" 2>&1 | tee "$log_dir/split_h$heads.log" || status=1
               done ;;
        *) echo "unknown stage $stage"; exit 2 ;;
    esac
    echo "stage $stage: $((SECONDS - start)) s" | tee -a "$log_dir/gpu.log"
done
echo
echo "=================== decoding: summary ==================="
grep -E "passed|failed|error" "$log_dir/tests.log" 2>/dev/null | tail -3
for table in "$log_dir/bench_162m.md" "$log_dir/bench_trained.md"; do
    [ -f "$table" ] && { echo; cat "$table"; }
done
exit $status
