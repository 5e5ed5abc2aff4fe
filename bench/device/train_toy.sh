#!/usr/bin/env bash
# Train the shipped toy weights on a GPU machine within a fixed budget (seconds, first argument).
# Expects: .whl/ (monai, ignite, fire, openpyxl wheels for that machine's Python) and .toy/ (the toy set,
# `monai-disc toy-data --out .toy`) carried with the tree; writes weights and logs under $OUT.
set -u
budget=${1:-240}
out=${OUT:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
root=$PWD
run() { python3 -m monai.bundle run --meta_file configs/metadata.json --logging_file configs/logging.conf \
  --bundle_root . --dataset_dir "$root/.toy" "$@"; }

# CarcinoNet trains beside the generator for the whole budget.
(cd bundles/carcinonet && run --config_file configs/train.yaml --output_dir /tmp/cn --model_dir "$out/cn" \
  --batch_size 32 --num_workers 4 --val_interval 10 --max_epochs 80 --time_limit_s $((budget - 10)) \
  > "$out/carcinonet.log" 2>&1) &

cd bundles/gleason_ldm
ae_s=$((budget / 4))
run --config_file configs/train_autoencoder.yaml --output_dir /tmp/ae --model_dir "$out/ldm" \
  --batch_size 32 --num_workers 4 --max_epochs 100000 --adv_start 1000 --time_limit_s $ae_s > "$out/autoencoder.log" 2>&1
run --config_file configs/train.yaml --output_dir /tmp/ldm --model_dir "$out/ldm" \
  --autoencoder_path "$out/ldm/autoencoder.pt" --batch_size 64 --num_workers 4 --val_interval 20 \
  --sample_interval 100000 --max_epochs 100000 --time_limit_s $((budget - ae_s - 25)) > "$out/ldm.log" 2>&1
wait
grep -h "Saved\|completed\|scale_factor\|Key metric\|Error" "$out"/*.log | tail -20
nvidia-smi --query-gpu=name,memory.used --format=csv 2>/dev/null
