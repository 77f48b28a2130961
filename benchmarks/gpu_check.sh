#!/usr/bin/env bash
# The VOC-scale check on one GPU: generate the benchmark at PASCAL VOC's geometry, run the
# synth/large recipe (CAM and AdvCAM; ResNet-50 classifier and IRN, DeepLab-v2 ResNet-101, all
# from scratch) end to end, and print each stage's seconds and the results table.
#
#   benchmarks/gpu_check.sh [--tiny] [OUT]        (OUT: default gpu_check_out)
#
# --tiny: the same chain on the CPU in a minute or two (tiny images, one or two updates per
# network): checks the script and the recipe's wiring, not the scores or the speed.
#
# Environment: PYTHON (default: python), the interpreter that has wsss; TRAIN, VAL (generated
# training and validation images), SEED_IMAGES (the first N training images get maps, pseudo
# masks and the DeepLab training; the classifier trains on all of them), WORKERS (data-loader and
# CRF processes); any further arguments after OUT go to `wsss run` (e.g. --set methods=[cam]).
# Rerunning with the same OUT resumes: finished stages are skipped.
set -euo pipefail

tiny=0
if [[ "${1:-}" == "--tiny" ]]; then
    tiny=1
    shift
fi
out="${1:-gpu_check_out}"
shift || true
python="${PYTHON:-python}"
wsss=("$python" -m wsss)

if ((tiny)); then
    train="${TRAIN:-8}" val="${VAL:-2}" seed_images="${SEED_IMAGES:-4}" workers="${WORKERS:-0}"
    sizes="[96,128]"  # IRN's radius of 10 cells needs crops of at least 76 px
    settings=(
        --set runtime.device=cpu
        --set classifier.epochs=1 --set classifier.batch_size=4 --set classifier.crop_size=96
        --set "classifier.resize_long=[96,128]"
        --set advcam.iterations=2
        --set irn.epochs=1 --set irn.batch_size=4 --set irn.crop_size=96
        --set segmentation.iterations=2 --set segmentation.batch_size=2 --set segmentation.crop_size=96
        --set segmentation.checkpoint_every=2
    )
else
    train="${TRAIN:-1000}" val="${VAL:-200}" seed_images="${SEED_IMAGES:-80}" workers="${WORKERS:-12}"
    sizes="[320,500]"
    settings=(--set runtime.device=cuda)
    if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA device (torch.cuda.is_available() is false); --tiny runs the CPU version" >&2
        exit 2
    fi
fi
settings+=(--set classifier.num_workers="$workers" --set irn.num_workers="$workers"
           --set segmentation.num_workers="$workers" --set ir_labels.workers="$workers")

mkdir -p "$out"
"$python" - <<'EOF'
import platform, torch
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"no GPU ({platform.processor() or 'CPU'})"
print(f"gpu_check: torch {torch.__version__}, {device}")
EOF

start=$(date +%s)
"${wsss[@]}" synth "$out/data" --train "$train" --val "$val" --ood 0 --no-progress \
    --set size_range="$sizes" --set "object_size=[0.3,0.6]"
generated=$(date +%s)
head -n "$seed_images" "$out/data/ImageSets/Segmentation/train.txt" > "$out/seed_split.txt"

"${wsss[@]}" run synth/large --work "$out/work" --set data.root="$out/data" \
    --set data.seed_split="$out/seed_split.txt" "${settings[@]}" "$@" | tee "$out/run.txt"
finished=$(date +%s)

echo
echo "gpu_check: data $((generated - start)) s, pipeline $((finished - generated)) s, total $((finished - start)) s" \
     "($train training images, $seed_images with seeds, $val val)" | tee -a "$out/run.txt"
