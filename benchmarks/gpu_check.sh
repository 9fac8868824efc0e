#!/usr/bin/env bash
# The GPU check of issue 10, one prepared script for one H100/H200 (16 cores), about 7 minutes, each part under
# its own time limit so the whole stays under 8. Run from the repository root:
#
#     bash benchmarks/gpu_check.sh            # figures in $OUT (default /tmp/gpu_check): log, *.json
#
# It installs nothing but wheels carried in .whl/ (the device image has torch, timm, numpy, pandas, scipy,
# tabulate, tqdm, pyyaml; it lacks pydantic and PyAV). Make them here, in the repository root, once:
#
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         -d .whl pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2 av==18.1.0
#
# Parts: 1. the smoke chain (`lofi run`, lofi-long) on CUDA in bf16 with G-TAD and with BMN; 2. `lofi bench memory
# --device cuda --amp bf16` at the paper's shape with both heads; 3. the `lofi bench step` table at the paper's
# scale (TSM-R18 + G-TAD, 100 snippets x 8 frames (stride 8) x 224^2, batch 16 (4 at full fidelity), fp32 and
# bf16, 14 loader workers on 32 generated 120 s videos); 4. T-LoFi bf16 over 50 loader steps with the speed
# switches (channels_last, cudnn.benchmark, torch.compile) against plain eager. Never part of CI.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}
WORK=${WORK:-/tmp/lofi-gpu}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing the carried wheels failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
python3 -c "import pydantic, av, timm, tabulate, torch; assert torch.cuda.is_available()" \
    || { echo "missing packages or no CUDA: carry .whl (see the header)"; exit 1; }
LOFI="python3 -m harness.cli"
T0=$SECONDS
log() { echo "== $* (t=$((SECONDS - T0)) s)" | tee -a "$OUT/log"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee -a "$OUT/log"

log "1. smoke chain on CUDA, bf16, both heads"
for head in gtad bmn; do
    timeout 120 $LOFI run --config config/smoke.yaml --mode lofi-long --seed 0 --head $head \
        --set runtime.device=cuda --set runtime.amp=true --set tracking.enabled=false --set lofi.head=$head \
        --set data.root="$WORK/smoke-data" --set data.cache_dir="$WORK/cache" \
        --stages "$WORK/stages-$head" --out "$WORK/smoke-$head" > "$OUT/smoke-$head.txt" 2>&1
    echo "smoke $head: exit $? $(tail -1 "$OUT/smoke-$head.txt")" | tee -a "$OUT/log"
done

log "2. bench memory, CUDA bf16, paper shape, batch 1"
for head in gtad bmn; do
    timeout 60 $LOFI bench memory --encoder tsm_resnet18 --head $head --snippets 100 --size 224 --frames 8 \
        --device cuda --amp bf16 --config config/activitynet.yaml 2>&1 | tee -a "$OUT/log"
    echo "bench memory $head: exit ${PIPESTATUS[0]}" | tee -a "$OUT/log"
done

log "3. bench step table at the paper's scale"
timeout 240 $LOFI bench step --encoder tsm_resnet18 --head gtad --snippets 100 --frames 8 --stride 8 --size 224 \
    --batch 16 --full-batch 4 --device cuda --videos 32 --seconds 120 --workers 14 --steps 20 --repeats 5 \
    --config config/activitynet.yaml --work "$WORK/bench" --json "$OUT/bench_step.json" 2>&1 | tee -a "$OUT/log"
echo "bench step: exit ${PIPESTATUS[0]}" | tee -a "$OUT/log"

log "4. T-LoFi bf16, 50 loader steps: eager vs channels_last + cudnn.benchmark vs + torch.compile"
COMMON=(--encoder tsm_resnet18 --head gtad --snippets 100 --frames 8 --stride 8 --size 224 --batch 16
    --device cuda --videos 32 --seconds 120 --workers 14 --steps 50 --repeats 5 --fidelity T --precision bf16
    --config config/activitynet.yaml --work "$WORK/bench")
left=$((470 - (SECONDS - T0)))
for variant in "eager:" "channels_last+cudnn:--channels-last --cudnn-benchmark" \
    "compile:--channels-last --cudnn-benchmark --compile"; do
    name=${variant%%:*}; flags=${variant#*:}
    left=$((470 - (SECONDS - T0)))
    if [ "$left" -lt 40 ]; then echo "skipped $name: ${left} s left" | tee -a "$OUT/log"; continue; fi
    # shellcheck disable=SC2086
    timeout "$left" $LOFI bench step "${COMMON[@]}" $flags --json "$OUT/step_T_$name.json" 2>&1 | tee -a "$OUT/log"
    echo "variant $name: exit ${PIPESTATUS[0]}" | tee -a "$OUT/log"
done
log "done"
