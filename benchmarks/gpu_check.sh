#!/usr/bin/env bash
# Every CUDA path of bpho, run once on an offline GPU machine, then the GPU speed tables.
#
#   ../shared/gpu/prepare.sh                       # here: fills .gpu/ with the wheels
#   bash benchmarks/gpu_check.sh                   # there, from the project root, with .gpu/ and
#                                                  # bpho-data/demo (`bpho demo-data`) carried along
#
# Each step runs under its own timeout, so a step that breaks does not stop the others; the
# logs end up in $OUT/logs.txt and one line per step (exit code, seconds) in $OUT/summary.txt.
# ONLY="step step ..." runs just those steps.
set -u
OUT=${OUT:-gpu-out}
DEMO=${DEMO:-$PWD/bpho-data/demo}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
source .gpu/env.sh
export BPHO_ROOT=/tmp/bpho-root MLFLOW_TRACKING_URI=sqlite:////tmp/bpho-root/mlflow.db
mkdir -p $BPHO_ROOT
B="python3 -m bpho.cli"
MODEL=models:/bpho-paired_001/latest

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tr '\r' '\n' | grep -v 'batch/s\|it/s\|s/it\|^\s*$' > "$LOGS/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "$name: rc=$rc $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
    { echo "=== $name (rc=$rc)"; cat "$LOGS/$name.log"; } >> "$OUT/logs.txt"
    tail -n 25 "$LOGS/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/card.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/card.txt"

step device_index 60 python3 -c "from bpho.inference import pick_device; print(pick_device('cuda'), pick_device('auto'))"
step sources 120 bash -c "$B datasource add confocal_airyscan_pairs_mito $DEMO/paired --kind paired &&
    $B datasource add demo_movie $DEMO/movie --kind movie"
step datasets 120 bash -c "$B dataset make paired_001 && $B dataset make movie_001"
# 512 px HR training tiles need fields larger than the demo's 512 px ones
step dataset_512 240 bash -c "$B demo-data $BPHO_ROOT/big --paired-fields 2 --paired-size 768 --movies 1 \
    --movie-frames 5 --hr-only-fields 1 --denoise-fields 1 && $B datasource add big $BPHO_ROOT/big/paired --kind paired &&
    $B dataset make paired_001 --datasource big --name paired_512 --set tile_sizes=128,256,512 --set tiles_per_image=16"
# one epoch: its time outside the training loop is the fixed cost (printed by bpho train)
step train_1epoch 120 $B train --dataset paired_001 --epochs 1 --device cuda
step train_amp_cl 180 $B train --dataset paired_001 --tile-size 128 --epochs 10 --amp --channels-last --device cuda
step tune_fit 240 $B tune fit --dataset paired_512 --memory-gb 8 --max-batch 64
step train_speed 240 python3 benchmarks/train_speed.py --dataset paired_512 --json "$OUT/train_speed.json"
step train_movie 180 $B train --dataset movie_001 --epochs 3 --amp --device cuda
step evaluate 120 $B evaluate --model $MODEL --dataset paired_001 --device cuda --out "$LOGS/evaluation"
step predict_half 120 $B predict --model $MODEL "$DEMO/movie/lr/movie_000.czi" --out "$LOGS/predictions" --half --device cuda
step inference_speed 240 python3 benchmarks/inference_speed.py --size 2048 --devices cuda --json "$OUT/inference_speed.json"
step ddp_nccl 180 python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m bpho.cli train \
    --dataset paired_001 --epochs 2 --amp --device cuda
python3 - "$LOGS" <<'PY'
import sys, tifffile, pathlib
for p in sorted(pathlib.Path(sys.argv[1], "predictions").glob("*.tif")):
    with tifffile.TiffFile(p) as tf:
        print(p.name, tf.series[0].shape, tf.series[0].dtype, "imagej" if tf.is_imagej else "")
PY
cat "$OUT/summary.txt"
