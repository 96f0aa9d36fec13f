#!/usr/bin/env bash
# The quick benchmarks on a lent GPU, as one command (device tool: `bash benchmarks/gpu_run.sh`).
#
# Runs from the repository root with the package on PYTHONPATH (no install). Every benchmark
# writes its markdown into $OUT and all output goes to $OUT/run.log, so at most 7 files come
# back (run.log, alignment.md, scaling.png, transfer.md, cross.md, plan_quick.md, scale.md,
# plan.md).
# Each benchmark has its own timeout; the whole run stays under about 7 minutes (BUDGET_S).
# Locally: OUT=/tmp/gpuout bash benchmarks/gpu_run.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpuout}
mkdir -p "$OUT"
LOG="$OUT/run.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# No up-front grab of 75% of the GPU's memory: the benchmarks start child processes.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PY:-python3}

{
  echo "== $(date -u +%FT%TZ) gpu_run.sh"
  nvidia-smi -L 2>&1 || echo "nvidia-smi: not available"
  "$PY" - <<'EOF' 2>&1
import platform, jax, flax, numpy, scipy
print("python", platform.python_version(), "| jax", jax.__version__, "| flax", flax.__version__,
      "| numpy", numpy.__version__, "| scipy", scipy.__version__)
print("backend", jax.default_backend(), "devices", jax.devices())
import importlib.util as u
for m in ("optax", "orbax.checkpoint", "matplotlib", "sklearn", "hypothesis", "tqdm"):
    print(f"  {m}: {'yes' if u.find_spec(m) else 'MISSING'}")
import dpiat_jax
print("dpiat_jax imported from", dpiat_jax.__file__)
EOF
} 2>&1 | tee "$LOG"

bench() {  # bench NAME SECONDS ARGS...
  local name=$1 limit=$(($2 * ${TIMEOUT_SCALE:-1}))
  shift 2
  echo "== $(date -u +%T) $name (timeout ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout --kill-after=5 "$limit" "$PY" "benchmarks/bench_$name.py" "$@" --out "$OUT" 2>&1 \
    | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
}

bench alignment 120 --quick
bench cross 60 --quick
bench plan 75 --quick
bench transfer 75 --quick
bench scale 90 --quick
# With time left (of BUDGET_S, about 7 minutes in all), the full plan benchmark: adds
# ResNet-50 -> 152 and the ~300M-parameter decoder in bf16 (writes plan.md).
left=$(( ${BUDGET_S:-420} - SECONDS ))
if [ "$left" -ge 90 ]; then
  bench plan $((left - 5))
else
  echo "== full plan benchmark skipped: ${left} s left" | tee -a "$LOG"
fi
echo "== $(date -u +%T) done; files in $OUT:" | tee -a "$LOG"
ls -l "$OUT" | tee -a "$LOG"
