#!/usr/bin/env bash
# The device check of docs/performance.md: the step-speed sweep on a CUDA GPU,
# in at most about 5 minutes. Needs a Python whose torch is a CUDA build; the
# lclr packages are installed into it (editable, no dependencies) if missing.
#
#     bash benchmarks/gpu_check.sh            # results under build/gpu-check/
#     OUT=/somewhere PYTHON=python3 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-build/gpu-check}
mkdir -p "$OUT"

"$PY" - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "no CUDA GPU visible to this torch"
print(torch.__version__, torch.cuda.get_device_name())
PYEOF
if ! "$PY" -c "import lclr, lclr_stylegan2, lclr_directions, lclr_contrastive" 2>/dev/null; then
    "$PY" -m pip install --quiet --no-deps -e . -e plugins/lclr-stylegan2 \
        -e plugins/lclr-directions -e plugins/lclr-contrastive
fi

run() { timeout "$1" "$PY" benchmarks/step_speed.py --device cuda --threads 4 "${@:2}"; }

# 1. The whole grid (bf16 autocast, the CUDA default): ~3 minutes.
run 200 --sweep --full --json "$OUT/sweep.json" --markdown "$OUT/sweep.md" \
    | tee "$OUT/sweep.log" || echo "sweep cut short; partial results kept"
# 2. float32 and channels-last, one point each: what autocast and the layout buy.
run 30 --generator port256 --layer convs.3 -k 32 -n 16 --repeats 3 \
    --json "$OUT/autocast.json" | tail -3
run 30 --generator port256 --layer convs.3 -k 32 -n 16 --repeats 3 --no-autocast \
    --json "$OUT/float32.json" | tail -3
run 30 --generator port256 --layer convs.3 -k 32 -n 16 --repeats 3 \
    --channels-last --json "$OUT/channels-last.json" | tail -3
# 3. torch.compile: compiles during the warm-up round.
run 60 --generator port256 --layer convs.3 -k 32 -n 16 --repeats 3 --compile \
    --json "$OUT/compile.json" | tail -3 || echo "compile check cut short"
echo "results in $OUT"
