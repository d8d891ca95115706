#!/usr/bin/env bash
# The GPU figures of issue 15, as one prepared run on a lent GPU machine (the `device` tool), under 10 minutes:
# where the anchored sampler synchronises the host (`sync_sites.py`); the paper-scale model stages (sDiT-XL/2,
# T=8, 256^2, random weights) eager and compiled, with MFU, flash check and host synchronisations; and, in
# parallel on one CPU core of the same host, the side-by-side sampler / bare-forwards benchmark. Needs diffusers (+ importlib_metadata) as wheels in .whl when the machine's
# Python lacks them (see the device tool's README). Results land in $OUT (or ./gpu-results).
set -o pipefail
OUT=${OUT:-gpu-results}; mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, numpy, diffusers, os; print('torch', torch.__version__, 'numpy', numpy.__version__, 'diffusers', diffusers.__version__, 'cpus', os.cpu_count())" | tee -a "$OUT/machine.txt"
# the CPU benchmark on core 15, the GPU one's host threads on cores 0-7: they share no core
pin() { local cores=$1; shift; if command -v taskset >/dev/null && taskset -c "$cores" true 2>/dev/null; then
  taskset -c "$cores" "$@"; else "$@"; fi; }
[ -n "$SKIP_CPU" ] || (pin 15 python3 benchmarks/bench_sampler_overhead.py --threads 1 --repeats 5 > "$OUT/overhead_cpu.txt" 2>&1) &
cpu_job=$!
pin 0-7 python3 benchmarks/sync_sites.py --frames 64 --micro-batch 4 2>&1 | tee "$OUT/sync_sites.txt"
common=(--device cuda --bf16 --skip-reenact --mfu --mfu-video-frames 400 --mfu-steps 20 50 --threads 4)
pin 0-7 python3 benchmarks/bench_reenact.py "${common[@]}" --sampler dpmpp-2m --json "$OUT/gpu_eager.json" 2>&1 | tee "$OUT/gpu.txt"
pin 0-7 python3 benchmarks/bench_reenact.py "${common[@]}" --sampler dpmpp-2m --compile --json "$OUT/gpu_compiled.json" 2>&1 | tee -a "$OUT/gpu.txt"
pin 0-7 python3 benchmarks/bench_reenact.py "${common[@]}" --sampler ddim --mfu-steps 20 --json "$OUT/gpu_ddim.json" 2>&1 | tee -a "$OUT/gpu.txt"
wait $cpu_job
cat "$OUT/overhead_cpu.txt"
