#!/usr/bin/env bash
# The attention kernels' GPU checks and benchmark, in one go, on a CUDA machine.
#   scripts/gpu_kernels.sh [LOG_DIR] [STAGES...]   STAGES: tests sweep bench profile skip sinkfree sinkfree-sweep replay
#   (default: tests bench)
# Logs go to LOG_DIR (default: $OUT if set, else gpu_logs/); the benchmark table ends bench.log.
# Stage skip (exact tile skipping; about 9 minutes on an H200 with its defaults, each part under a time limit so that
# the summary prints): a TDA run is trained in the background (SKIP_TRAIN_STEPS steps of +experiment=paper_small,
# default 1200, one epoch, into runs/$SKIP_RUN, default tda-skip-bench; an existing run is reused) while the GPU tests
# of skipping run (skip_tests.log; correctness only, so sharing the GPU does not matter); then, on a quiet GPU, the table
# at T = 4096, 8192, 16384, d = 64 on dense inputs (every tile occupied) and random ones, exact skipping on and off,
# cuDNN and FlashAttention-2 in the same run (skip_dense.log, skip_random.log), and the trained run's own q, k, v timed
# per layer at T = 2048 … 16384 (skip_from_run.log, python -m benchmarks.attention --from-run); a summary last.
set -o pipefail
stages=()
log_dir=${OUT:-gpu_logs}
for arg in "$@"; do
    case $arg in
        tests|sweep|bench|profile|skip|sinkfree|sinkfree-sweep|replay) stages+=("$arg") ;;
        *) log_dir=$arg ;;
    esac
done
[ ${#stages[@]} -eq 0 ] && stages=(tests bench)
mkdir -p "$log_dir"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv \
    | tee "$log_dir/gpu.log"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$log_dir/gpu.log"

skip_stage() {
    local steps=${SKIP_TRAIN_STEPS:-1200} run=${SKIP_RUN:-tda-skip-bench} trainer start=$SECONDS
    if [ -e "runs/$run" ]; then
        echo "runs/$run exists: timing it as it is" | tee "$log_dir/skip_train.log"
    else
        python3 train.py +experiment=paper_small "trainer.max_steps=$steps" "trainer.eval_every=$steps" \
            "trainer.checkpoint_every=$((steps / 2))" logger.progress=false "name=$run" \
            > "$log_dir/skip_train.log" 2>&1 &
        trainer=$!
    fi
    # compiled kernels (not the interpreter the CPU suite uses): the tests built for skipping and those of the Gluon
    # kernels and the deterministic path, which it changed (every other test runs with skipping on too)
    TRITON_INTERPRET=0 timeout 180 python3 -m pytest -q -rfE -n 8 -p no:cacheprovider --timeout=170 \
        tests/test_threshold_gpu.py -k "skips or skipping_on_gpu or corrupted or fused_gluon or deterministic" \
        > "$log_dir/skip_tests.log" 2>&1 || status=1
    tail -n 3 "$log_dir/skip_tests.log"
    if [ -n "$trainer" ]; then  # at most 230 s from the start; a run stopped early keeps its half-way checkpoint
        while kill -0 "$trainer" 2>/dev/null && [ $((SECONDS - start)) -lt 230 ]; do sleep 2; done
        kill "$trainer" 2>/dev/null && echo "training stopped at 230 s" | tee -a "$log_dir/skip_train.log"
        wait "$trainer"
        tail -n 2 "$log_dir/skip_train.log"
    fi
    for inputs in dense random; do
        timeout 90 python3 -m benchmarks.attention --seq 4096 8192 16384 --head-dims 64 --no-reference \
            --skip-ab --rep-ms 30 $([ $inputs = dense ] && echo --dense) > "$log_dir/skip_$inputs.log" 2>&1 \
            || status=1
    done
    timeout 130 python3 -m benchmarks.attention --from-run "runs/$run" --head-dims 64 --rep-ms 30 \
        > "$log_dir/skip_from_run.log" 2>&1 || status=1
    echo
    echo "== GPU tests of skipping ($log_dir/skip_tests.log) =="
    tail -n 1 "$log_dir/skip_tests.log"
    for inputs in dense random; do
        echo "== $inputs inputs: exact skipping on and off; tiles: the share holding a survivor =="
        grep -m 1 -E "^\| T \| B \| method" "$log_dir/skip_$inputs.log"
        grep -E "^\| [0-9]+ \| [0-9]+ \| (sdpa-cudnn|sdpa-flash|tda \(paired\)(, no skip)?|tra(, no skip)?) \|" \
            "$log_dir/skip_$inputs.log" | tail -n 18
        grep -m 1 -E "^\| T \| B \| layout" "$log_dir/skip_$inputs.log"
        grep -E "^\| [0-9]+ \| [0-9]+ \| (tda \(paired\)|tra) [0-9]+×" "$log_dir/skip_$inputs.log" | tail -n 9
    done
    echo "== the trained run's own q, k, v, summed over its layers =="
    grep -m 1 -E "^\| T \| B \| layer" "$log_dir/skip_from_run.log"
    grep -E "^\| [0-9]+ \| [0-9]+ \| Σ" "$log_dir/skip_from_run.log" | tail -n 4
    grep -E "Error|error:" "$log_dir/skip_from_run.log" | tail -n 3
    return 0
}

for stage in "${stages[@]}"; do
    case $stage in
        # compiled kernels (not the interpreter the CPU suite uses)
        tests) TRITON_INTERPRET=0 python3 -m pytest -q -rA -n 8 -p no:cacheprovider \
                   --timeout=900 tests/test_threshold_gpu.py 2>&1 | tee "$log_dir/tests.log" \
                   || status=1 ;;
        sweep) python3 -m benchmarks.attention --seq 4096 --head-dims 64 --sweep --no-reference --rep-ms 50 2>&1 \
                   | tee "$log_dir/sweep.log" || status=1 ;;
        bench) python3 -m benchmarks.attention 2>&1 | tee "$log_dir/bench.log" || status=1 ;;
        profile) python3 -m benchmarks.profile --out "$log_dir/profile.md" 2>&1 | tee "$log_dir/profile.log" \
                   || status=1 ;;
        # the sink-free baselines' kernels (kernels/sigmoid, kernels/softpick, kernels/sink_softmax): their GPU tests,
        # then their benchmark beside cuDNN softmax and TRA (the table ends the log); sinkfree-sweep: tile candidates
        sinkfree) TRITON_INTERPRET=0 python3 -m pytest -q -rA -n 8 -p no:cacheprovider --timeout=600 \
                      tests/test_sink_free_gpu.py 2>&1 | tee "$log_dir/sinkfree_tests.log" || status=1
                  python3 -m benchmarks.sink_free 2>&1 | tee "$log_dir/sinkfree_bench.log" || status=1 ;;
        sinkfree-sweep) python3 -m benchmarks.sink_free --seq 8192 --sweep 2>&1 | tee "$log_dir/sinkfree_sweep.log" \
                            || status=1 ;;
        skip) skip_stage ;;
        # kernels/replay (the paired call issued by its C++ engine): its GPU tests, then the host µs per
        # forward+backward beside cuDNN's and the Python path's, and one call taken apart (--parts)
        replay) TRITON_INTERPRET=0 python3 -m pytest -q -rA -p no:cacheprovider --timeout=600 tests/test_replay_gpu.py \
                    2>&1 | tee "$log_dir/replay_tests.log" || status=1
                python3 -m benchmarks.replay --parts 2>&1 | tee "$log_dir/replay_bench.log" || status=1 ;;
        *) echo "unknown stage $stage"; exit 2 ;;
    esac
done
exit $status
