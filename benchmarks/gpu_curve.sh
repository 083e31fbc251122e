#!/usr/bin/env bash
# The learning curve (#23, benchmarks/learning_curve.py) in one call on a lent GPU machine: the
# demo data made in parallel, the points trained side by side (PAR workers, each its own root
# with a hard-linked copy of the data), then one table over all their caches.
#
#   ../shared/gpu/prepare.sh                      # here: fills .gpu/ with the wheels
#   bash benchmarks/gpu_curve.sh                  # there, from the project root, with .gpu/ carried
#   CURVE="--smoke" POINTS="unet:real:0:3 unet:real:0:6 unet:fitted:0:6" JOBS=2 PAR=2 \
#       bash benchmarks/gpu_curve.sh              # the tiniest run, on a CPU
#
# POINTS: arch:method:seed:fields, the longest first. A worker that would start after DEADLINE
# seconds is skipped and a running one is stopped then, so that the table is made in time; what
# finished is in $OUT/runs/*.jsonl (append them to a root's cache and run --cached-only there).
set -u
OUT=${OUT:-curve-out}
W=${W:-/tmp/lc}
PY=${PY:-python3}
JOBS=${JOBS:-16}
PAR=${PAR:-10}
DEADLINE=${DEADLINE:-480}
CURVE=${CURVE:-"--base-minutes 0.75 --minutes-per-field 0.03"}
POINTS=${POINTS:-"unet:real:0:96 unet:real:1:96 unet:fitted:0:96 unet:fitted:1:96 rcan:real:0:96
    unet:real:0:48 unet:real:1:48 unet:fitted:0:48 unet:fitted:1:48 unet:physical:0:48 unet:classic:0:48
    unet:real:0:24 unet:real:1:24 unet:fitted:0:24 unet:fitted:1:24 rcan:real:0:24
    unet:real:0:12 unet:real:1:12 unet:fitted:0:12 unet:fitted:1:12 unet:physical:0:12 unet:classic:0:12
    unet:real:0:6 unet:real:1:6 unet:fitted:0:6 unet:fitted:1:6 unet:real:0:3 unet:real:1:3"}
if [ -f .gpu/env.sh ]; then source .gpu/env.sh; fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} PY W OUT CURVE DEADLINE JOBS
rm -rf "$W" && mkdir -p "$W" "$OUT/runs" "$OUT/logs"
START=$(date +%s)
export START
unset MLFLOW_TRACKING_URI BPHO_ROOT  # every root its own sqlite store
$PY benchmarks/learning_curve.py $CURVE --root "$W/main" --out "$W/main/out" --jobs "$JOBS" --prepare-only \
    2>&1 | tee "$OUT/logs/prepare.log"

worker() {  # arch method seed fields
    local name="$1_$2_s$3_n$4" left=$((DEADLINE - $(date +%s) + START))
    if [ "$left" -lt 30 ]; then echo "$name: skipped (deadline)"; return; fi
    mkdir -p "$W/$name" && cp -al "$W/main/demo" "$W/$name/demo"
    timeout "$left" $PY benchmarks/learning_curve.py $CURVE --jobs "$JOBS" --root "$W/$name" --out "$W/$name/out" --arch "$1" \
        --methods "$2" --seeds "$3" --only-fields "$4" > "$OUT/logs/$name.log" 2>&1
    echo "$name: rc=$? at $(($(date +%s) - START)) s"
    cp "$W/$name/learning_curve_runs.jsonl" "$OUT/runs/$name.jsonl" 2>/dev/null
    cat "$W/$name"/out/logs/*.log >> "$OUT/logs/$name.log" 2>/dev/null
}
export -f worker
echo $POINTS | tr ' ' '\n' | tr ':' ' ' | xargs -P "$PAR" -L 1 bash -c 'worker "$@"' _ | tee "$OUT/logs/workers.log"

cat "$OUT"/runs/*.jsonl >> "$W/main/learning_curve_runs.jsonl" 2>/dev/null
archs=$(echo $POINTS | tr ' ' '\n' | cut -d: -f1 | awk '!s[$0]++' | paste -sd,)
methods=$(echo $POINTS | tr ' ' '\n' | cut -d: -f2 | awk '!s[$0]++' | paste -sd,)
seeds=$(echo $POINTS | tr ' ' '\n' | cut -d: -f3 | sort -u | paste -sd,)
$PY benchmarks/learning_curve.py $CURVE --jobs "$JOBS" --root "$W/main" --out "$OUT/curve" --cached-only --arch "$archs" \
    --methods "$methods" --seeds "$seeds" 2>&1 | tee "$OUT/logs/table.log"
echo "total $(($(date +%s) - START)) s"
