#!/usr/bin/env bash
# GPU checks of the design's interface (issue 14), on the tiny demo model, one GPU:
#   bash bench/gpu_fidelity.sh      (logs and a summary under $OUT/fidelity; needs the gpu extra: deepspeed, bitsandbytes)
#   1. `deepspeed --num_gpus=1 ... --deepspeed config/self_model_config/deepspeed/ds_config.json` for CPT and SFT
#   2. SFT with `peft.qlora: true` (the tiny model saved first: QLoRA quantizes loaded weights)
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${OUT:-bench/results}/fidelity
mkdir -p "$RESULTS"
SHORT=(training_args.num_train_epochs=1 training_args.max_steps=10 eval_before_training=false --overwrite)
run() {  # name, command...: the log in $RESULTS/name.log, the exit code and last loss line in summary.txt
  local name=$1; shift
  "$@" > "$RESULTS/$name.log" 2>&1
  echo "$name: exit $? | $(grep -o "'train_loss': [0-9.]*" "$RESULTS/$name.log" | tail -1)" | tee -a "$RESULTS/summary.txt"
}
DS=config/self_model_config/deepspeed/ds_config.json
run cpt_deepspeed deepspeed --num_gpus=1 self_model/pretrain/train_pretrain.py --config config/examples/pretrain_tiny.yaml \
  --deepspeed "$DS" training_args.output_dir="$RESULTS/cpt" "${SHORT[@]}"
run sft_deepspeed deepspeed --num_gpus=1 self_model/fine_tuning/train_finetune.py --config config/examples/sft_tiny.yaml \
  --deepspeed "$DS" training_args.output_dir="$RESULTS/sft" "${SHORT[@]}"
python3 - "$RESULTS/tiny_model" <<'PY'
import sys
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
config = AutoConfig.from_pretrained("examples/tiny/model_config.json")
AutoModelForCausalLM.from_config(config).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained("examples/tiny/tokenizer").save_pretrained(sys.argv[1])
PY
run sft_qlora python3 self_model/fine_tuning/train_finetune.py --config config/examples/sft_tiny.yaml \
  model_name_or_path="$RESULTS/tiny_model" model.init_from_config=null peft.enabled=true peft.qlora=true \
  training_args.output_dir="$RESULTS/sft_qlora" "${SHORT[@]}"
ls "$RESULTS/sft_qlora" >> "$RESULTS/summary.txt" 2>&1
