#!/usr/bin/env bash
# The one prepared script for a GPU session: environment check, step benchmark, then the paper's CIFAR-10-LT
# tables in priority order within a time budget, everything written under $OUT as it finishes.
#
# Prepare on the CPU machine (the GPU machine cannot reach the shared data):
#     .venv/bin/python -m rayjobs.carry            # -> .data/cifar10/{train,test}.parquet, ~51 MiB, verified
# Run through the device tool from the repo root, carrying .data, with timeout_s >= BUDGET + 100:
#     TWOHEAD_COMMIT=<sha> bash rayjobs/device_reproduce.sh [BUDGET_S=480] [CONCURRENT=4] [reproduce args...]
# Extra arguments replace the default "--table cifar10-lt --table cifar10-lt-ablation", e.g.
#     bash rayjobs/device_reproduce.sh 480 4 --table cifar10-lt --methods ce,twohead,twohead_full --imbalances 100
#
# BUDGET_S bounds the whole script: reproduce launches no run predicted to end after it, and is sent SIGTERM
# 60 s after it (it then stops its runs and writes the tables of what finished). Comes back under $OUT
# (the tool returns at most 8 files, 2 folders deep -- hence the archives):
#     device_log.txt       this script's output (env, bench table, progress, failures)
#     bench.json           rayjobs.bench rows (img/s, projected 200-epoch time)
#     results.tar.gz       results/: per-run JSONs, the Markdown tables, Fig. 3 (unpack into the repo root)
#     logs.tar.gz          every run's log and resolved config
#     <table>.md           the tables, for a quick look
# The GPU machine has torch, torchvision, pyarrow, pillow, pyyaml, tqdm, matplotlib but no Ray: nothing here
# imports Ray.
set -uo pipefail

BUDGET=${1:-480}
CONCURRENT=${2:-4}
shift $(( $# < 2 ? $# : 2 ))
ARGS=("$@")
if [ ${#ARGS[@]} -eq 0 ]; then
    ARGS=(--table cifar10-lt --table cifar10-lt-ablation)
fi
OUT=${OUT:-$PWD/device-out}
WORK=${WORK:-/tmp/twohead-reproduce}
PY=${PYTHON:-python3}
T0=$(date +%s)
mkdir -p "$OUT" "$WORK"

elapsed() { echo $(( $(date +%s) - T0 )); }

main() {
echo "== environment ($(date -u +%FT%TZ))"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi not available"
"$PY" - <<'EOF' || { echo "FATAL: python / torch check failed"; return 3; }
import platform, sys
import torch, torchvision
print("python", sys.version.split()[0], platform.machine(), "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| torchvision", torchvision.__version__)
print("cuda available:", torch.cuda.is_available(), "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
EOF

echo "== imports (twohead without Ray)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF' || { echo "FATAL: a package twohead needs is missing (carry it as a wheel)"; return 3; }
import importlib, sys
missing = []
for m in ("numpy", "yaml", "tqdm", "pyarrow", "PIL", "matplotlib", "sklearn"):
    try:
        importlib.import_module(m)
    except ImportError as e:
        missing.append(f"{m} ({e})")
if missing:
    sys.exit("missing: " + ", ".join(missing))
import twohead, twohead.loop, twohead.data, twohead.plots, twohead.cli  # noqa: E401
import rayjobs.bench, rayjobs.reproduce  # noqa: E401
assert "ray" not in sys.modules, "Ray was imported on the Ray-free path"
print("ok: twohead", twohead.__version__, "(no Ray)")
EOF

echo "== data"
for f in .data/cifar10/train.parquet .data/cifar10/test.parquet; do
    if [ ! -f "$f" ]; then
        echo "FATAL: $f missing: run 'python -m rayjobs.carry' on the CPU machine and carry .data"
        return 3
    fi
done
ls -l .data/cifar10
export TWOHEAD_DATA="$PWD/.data"
export TWOHEAD_CACHE="$WORK/cache"

echo "== step benchmark (t=$(elapsed) s)"
timeout 180 "$PY" -m rayjobs.bench --json "$OUT/bench.json" || echo "bench failed or timed out (rc $?); continuing"

LEFT=$(( BUDGET - $(elapsed) - 20 ))  # 20 s to pack the results
echo "== reproduce (t=$(elapsed) s, budget for runs ${LEFT} s, ${CONCURRENT} at a time): ${ARGS[*]}"
if [ "$LEFT" -lt 30 ]; then
    echo "no time left for runs"
    RC=4
else
    timeout --signal=TERM --kill-after=30 $(( LEFT + 60 )) \
        "$PY" -m rayjobs.reproduce "${ARGS[@]}" \
        --concurrent "$CONCURRENT" --time-budget "$LEFT" \
        --out "$WORK/results" --work "$WORK/runs" --archive "$OUT/results.tar.gz" -v
    RC=$?
fi

echo "== packing (t=$(elapsed) s, reproduce rc $RC)"
cp "$WORK"/results/*.md "$OUT"/ 2>/dev/null || true
if [ -d "$WORK/runs" ]; then
    tar -czf "$OUT/logs.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.png' --exclude='metrics.json' \
        $(cd "$WORK" && find runs -maxdepth 2 \( -name logs -o -name plans \) -type d) 2>/dev/null || true
fi
ls -l "$OUT"
echo "== done in $(elapsed) s"
return "$RC"
}

# A pipeline (not exec > >(tee)) so the log is complete on disk when the script exits.
main 2>&1 | tee -a "$OUT/device_log.txt"
exit "${PIPESTATUS[0]}"
