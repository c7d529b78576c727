#!/usr/bin/env bash
# The one GPU check: CUDA tests, then JPQ vs uncompressed on the GPU (training step, top-20, peak memory).
#
#     bash benchmarks/gpu_check.sh            # from the repository root, on a machine with one GPU
#
# Fits in 10 minutes on one GPU (each part under its own deadline). Writes $OUT/ (default ./gpu-check/):
# pytest.log, bench.log, bench.json and summary.txt, and prints the summary. Without a CUDA device it
# stops at once with one line and exit 2. The plugin is used from this checkout (PYTHONPATH).
set -uo pipefail

OUT=${OUT:-$PWD/gpu-check}
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False, or torch does not import); run it on a GPU" >&2
    exit 2
fi
mkdir -p "$OUT"

"$PYTHON" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)' | tee "$OUT/summary.txt"

# 1. the CUDA tests (RecBole / MMRec cases skip where those are not installed)
timeout 240 "$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py >"$OUT/pytest.log" 2>&1
tests_rc=$?
echo "CUDA tests: exit $tests_rc; $(tail -n 1 "$OUT/pytest.log")" | tee -a "$OUT/summary.txt"

# 2. training step and top-20 at 10^6 and 10^7 IDs
timeout 300 "$PYTHON" benchmarks/gpu_bench.py --sizes 1e6,1e7 --json "$OUT/bench.json" >"$OUT/bench.log" 2>&1
bench_rc=$?
echo "bench: exit $bench_rc" | tee -a "$OUT/summary.txt"
cat "$OUT/bench.log" | tee -a "$OUT/summary.txt"

[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
