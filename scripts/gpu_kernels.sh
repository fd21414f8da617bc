#!/usr/bin/env bash
# The attention kernels' GPU checks and benchmark, in one go, on a CUDA machine.
#   scripts/gpu_kernels.sh [LOG_DIR] [STAGES...]     STAGES: tests sweep bench profile (default: tests bench)
# Logs go to LOG_DIR (default: gpu_logs/); the benchmark table ends bench.log.
set -o pipefail
log_dir=${1:-gpu_logs}
shift || true
stages=${*:-tests bench}
mkdir -p "$log_dir"
export PYTHONUNBUFFERED=1
status=0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv \
    | tee "$log_dir/gpu.log"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$log_dir/gpu.log"
for stage in $stages; do
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
        *) echo "unknown stage $stage"; exit 2 ;;
    esac
done
exit $status
