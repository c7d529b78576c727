#!/usr/bin/env bash
# One `urecjpq bench` on a machine with no internet and no RecBole (the lent GPU machine), from the
# repository root:
#
#     bash benchmarks/device_sweep.sh --models BPR,LightGCN --seeds 2020,2021 --out bench-gpu
#
# Needs: python3 with torch, numpy, scipy, pandas, pyyaml, tqdm, tensorboard, matplotlib, tabulate,
# colorama, scikit-learn, psutil; and in .whl/ the pure-Python wheels it lacks (recbole 1.2.1,
# colorlog, texttable, thop: see "Wheels" below). ray, plotly and faiss are not needed (the plugin
# stands in for ray; hyper-parameter search is the only user). The plugin is used from this checkout
# (PYTHONPATH), not installed.
#
# Steps: install the wheels into /tmp/site; print the GPU and versions; run the bench with the given
# arguments under a deadline (SWEEP_DEADLINE_S, default 540 s, so a 600 s device command still gets
# its results back: runs finished before the deadline are kept and reported); pack the results
# folder (no checkpoints, no tensorboard, log tails only) into $OUT/results.tar.gz (< 16 MiB) and the
# bench's own output into $OUT/bench.log. Exit status: the bench's (124 when the deadline stopped it).
#
# Wheels (made once where pip reaches PyPI; .whl/ is git-ignored through .git/info/exclude):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl recbole==1.2.1 colorlog==4.7.2 texttable==1.7.2 thop==0.1.1.post2209072238
set -uo pipefail

OUT=${OUT:-$PWD/device-out}
SITE=${SWEEP_SITE:-/tmp/site}
DEADLINE=${SWEEP_DEADLINE_S:-540}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

if [ ! -d urecjpq_plugin ]; then
    echo "device_sweep: run from the repository root (no urecjpq_plugin/ in $PWD)" >&2
    exit 2
fi
shopt -s nullglob
wheels=(.whl/*.whl)
if [ ! -d "$SITE/recbole" ]; then
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "device_sweep: no wheels in .whl/ and no RecBole in $SITE; see 'Wheels' in $0" >&2
        exit 2
    fi
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" \
        || { echo "device_sweep: installing ${wheels[*]} into $SITE failed" >&2; exit 2; }
fi
# Children of the bench (python -m urecjpq_bench.child, started in each run's folder) inherit
# this environment; both paths are absolute.
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# Compile once here rather than in every parallel run's first import.
"$PYTHON" -m compileall -q -j 0 "$SITE" urecjpq_plugin > /dev/null 2>&1 || true

# The results folder: --out DIR / --out=DIR (default bench-results, as the bench's own).
results=bench-results
prev=
for arg in "$@"; do
    case "$arg" in --out=*) results=${arg#--out=} ;; esac
    [ "$prev" = "--out" ] && results=$arg
    prev=$arg
done
results=${results/#\~/$HOME}
name=$(basename "$results")

{
    echo "== $(date -u +%FT%TZ) $(hostname) nproc=$(nproc)"
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 || echo "nvidia-smi: not available"
    "$PYTHON" - <<'EOF'
import sys, importlib
print("python", sys.version.split()[0], sys.executable)
for name in ("torch", "numpy", "scipy", "pandas", "sklearn", "recbole", "colorlog", "texttable", "thop", "ray", "faiss"):
    try:
        module = importlib.import_module(name)
        print(f"{name:10s} {getattr(module, '__version__', '?'):14s} {getattr(module, '__file__', '')}")
    except Exception as err:  # noqa: BLE001 (report and go on)
        print(f"{name:10s} -- {type(err).__name__}: {err}")
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
from urecjpq_plugin.hosts.recbole import compat as recbole_compat
print("recbole_compat shims:", recbole_compat.apply() or "none needed")
EOF
    "$PYTHON" benchmarks/cuda_smoke.py || echo "device_sweep: a CUDA smoke case failed (above); the bench runs anyway"
    echo "== bench: $PYTHON -m urecjpq_plugin.cli bench $* (deadline ${DEADLINE}s)"
} 2>&1 | tee "$OUT/env-$name.txt"

start=$(date +%s)
timeout --signal=TERM --kill-after=20 "$DEADLINE" "$PYTHON" -m urecjpq_plugin.cli bench "$@" 2>&1 | tee "$OUT/bench-$name.log"
rc=${PIPESTATUS[0]}
echo "== bench exit status $rc after $(( $(date +%s) - start )) s" | tee -a "$OUT/bench-$name.log"

# Stopped by the deadline: rewrite the tables from every run that finished (runs/*.json).
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    "$PYTHON" - "$results" <<'PY' 2>&1 | tee -a "$OUT/bench-$name.log"
import json, sys
from pathlib import Path
from urecjpq_bench.report import write_reports
from urecjpq_bench.store import all_runs
out = Path(sys.argv[1])
records = [r for r in all_runs(out / "runs") if r.get("status") == "ok"]
settings = json.loads((out / "bench.json").read_text()).get("settings", {})
write_reports(records, out, title=f"STOPPED AT THE DEADLINE: {len(records)} finished runs; settings {settings}")
print(f"device_sweep: deadline reached; tables rewritten from {len(records)} finished runs")
PY
fi

# Pack what the report needs: settings, per-run JSON, tables, plots, spec and log tails of every run.
if [ -d "$results" ]; then
    stage=$(mktemp -d)
    dest="$stage/$name"
    mkdir -p "$dest/runs"
    for f in "$results"/bench.json "$results"/results.* ; do cp "$f" "$dest/"; done
    [ -d "$results/plots" ] && cp -r "$results/plots" "$dest/"
    for f in "$results"/runs/*.json; do cp "$f" "$dest/runs/"; done
    for run in "$results"/runs/*/; do
        id=$(basename "$run")
        mkdir -p "$dest/runs/$id"
        [ -f "$run/spec.json" ] && cp "$run/spec.json" "$dest/runs/$id/"
        [ -f "$run/child.log" ] && tail -n 200 "$run/child.log" > "$dest/runs/$id/child.log"
        for log in "$run"/log/*/*.log; do tail -n 400 "$log" > "$dest/runs/$id/recbole.log"; done
    done
    tarball="$OUT/results.tar.gz"
    [ -e "$tarball" ] && tarball="$OUT/results-$name.tar.gz"  # a second sweep in the same command
    tar -C "$stage" -czf "$tarball" "$name"
    if [ "$(stat -c %s "$tarball")" -gt $((15 * 1024 * 1024)) ]; then  # the device returns files < 16 MiB
        find "$dest/runs" -name '*.log' -delete
        tar -C "$stage" -czf "$tarball" "$name"
        echo "device_sweep: logs left out of $tarball (over 15 MiB with them)"
    fi
    rm -rf "$stage"
    echo "== packed $results into $tarball ($(du -h "$tarball" | cut -f1))"
else
    echo "device_sweep: no results folder $results to pack" >&2
fi
exit "$rc"
