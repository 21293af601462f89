#!/usr/bin/env bash
# The shipped photo front-ends (pretrained/natural-ae-L0.1, -L0.3) and the noise-placement pair of
# docs/placement.md, as they were trained: on the training half (--class-split train, 250 classes) of
# ../shared/data/imagenet-samples-dev, on the 2-core CPU, the runs side by side with one thread each (about
# 35 min of wall time). Resumable: rerun the script and each run continues from its checkpoint.
#
#   bash tools/train_natural_images.sh [OUT]      # default OUT=runs/train
#
# Then: python tools/ship_checkpoint.py OUT/unet-input-L0.1 pretrained/natural-ae-L0.1 --card CARD.md
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/train}
data=${DPAE_IMAGENET_DEV:-../shared/data/imagenet-samples-dev}
mkdir -p "$out"
common=(--data "$data" --class-split train --arch unet-cpu --crop random --image-size 128 --batch-size 16
        --epoch-images 800 --val-images 25 --lr 2e-3 --lr-schedule cosine --workers 0 --quiet)
# MSE for 20 epochs, then MSE + 0.05 x the stability loss through the frozen EfficientNet-Lite0 for 8. (Resuming
# both to --epochs 40, 12 more fine-tune epochs, changed no certified figure by more than one of 25 photos at
# n = 100: the shipped models are the 28-epoch ones.)
stability=(--epochs 28 --mse-epochs 20 --finetune-lr 2e-4 --stability-classifier efficientnet_lite0-offline
           --stability-weight 0.05)

run() {  # name, then dpae train arguments; resumes a run that has a checkpoint
  local name=$1; shift
  local resume=()
  [ -f "$out/$name/config.json" ] && resume=(--resume)
  OMP_NUM_THREADS=1 dpae train "${common[@]}" "$@" "${resume[@]}" --out "$out/$name" >> "$out/$name.log" 2>&1
}

run unet-input-L0.1 "${stability[@]}" --noise-placement input --L 0.1 &
run unet-input-L0.3 "${stability[@]}" --noise-placement input --L 0.3 &
# The placement pair: the same U-Net and MSE phase, noise on the image vs after a conv + ReLU.
run unet-latent-L0.1-mse --epochs 20 --noise-placement latent --L 0.1 &
# (unet-input-L0.1-mse is the same run as the first 20 epochs of unet-input-L0.1: same seed, data order, noise and
# learning rates. The measured one was copied from that run's epoch-20 checkpoint instead of trained twice.)
run unet-input-L0.1-mse --epochs 20 --noise-placement input --L 0.1 &
wait
