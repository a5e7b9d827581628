#!/usr/bin/env bash
# GRPO on one GPU, same settings three ways: our verl backend, raw verl from its own command line, our TRL backend.
#   RESPONSE=512 bash bench/verl_grpo.sh ours|raw|trl|summary   (needs the gpu bundle installed; results in $OUT)
# `ours` runs first: it writes the random-init model and the parquet files that `raw` then reads. RESPONSE is the
# answer length for all three (default 512; the 2026-11-24 figures used 128). `trl` generates with vLLM colocated
# (TRL_ENGINE=hf for transformers' generate). Data: .gpu-data/gsm8k and .gpu-data/minimind, copied from
# ../shared/data/gsm8k and ../shared/tokenizers/minimind and carried.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}; mkdir -p "$OUT"; RESPONSE=${RESPONSE:-512}
WORK=/tmp/bench_grpo
mkdir -p /tmp/qwen25_05b "$WORK"
python3 -c "import json, sys; sys.path.insert(0, 'bench'); from common import SHAPES; \
json.dump({**SHAPES['0.5b'], 'bos_token_id': 1}, open('/tmp/qwen25_05b/config.json', 'w'))"
case "$1" in
ours)
  SECONDS=0
  python3 self_model/rlhf/train_grpo.py --config bench/verl_grpo.yaml rl.rollout.max_response_length=$RESPONSE \
    > "$OUT/grpo_ours.log" 2>&1
  echo "ours rc=$? after ${SECONDS}s"; cp "$WORK/ours/verl_metrics.jsonl" "$OUT/grpo_ours_metrics.jsonl" 2>/dev/null
  ls "$WORK/ours/hf_model" | head; tail -3 "$OUT/grpo_ours.log" ;;
raw)
  SECONDS=0
  VERL_FILE_LOGGER_PATH="$WORK/raw_metrics.jsonl" timeout 560 python3 -m verl.trainer.main_ppo \
    algorithm.adv_estimator=grpo \
    data.train_files="$WORK/ours/data/train.parquet" data.val_files="$WORK/ours/data/train.parquet" \
    data.train_batch_size=32 data.max_prompt_length=384 data.max_response_length=$RESPONSE \
    data.dataloader_num_workers=2 data.filter_overlong_prompts=True data.truncation=left \
    actor_rollout_ref.model.path="$WORK/ours/initial_model" +actor_rollout_ref.model.override_config.attn_implementation=sdpa \
    actor_rollout_ref.actor.optim.lr=1e-6 actor_rollout_ref.actor.optim.lr_scheduler_type=cosine \
    actor_rollout_ref.actor.optim.weight_decay=0 actor_rollout_ref.actor.ppo_mini_batch_size=16 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.actor.use_kl_loss=True actor_rollout_ref.actor.kl_loss_coef=0.001 \
    actor_rollout_ref.rollout.name=vllm actor_rollout_ref.rollout.n=4 actor_rollout_ref.rollout.gpu_memory_utilization=0.4 \
    actor_rollout_ref.rollout.tensor_model_parallel_size=1 actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8 actor_rollout_ref.rollout.enforce_eager=True \
    ray_kwargs.ray_init.num_cpus=12 +ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH="$WORK/raw_metrics.jsonl" \
    trainer.logger=[console,file] trainer.n_gpus_per_node=1 trainer.nnodes=1 trainer.total_training_steps=6 \
    trainer.save_freq=-1 trainer.test_freq=-1 trainer.val_before_train=False trainer.default_local_dir="$WORK/raw_ckpt" \
    > "$OUT/grpo_raw.log" 2>&1
  echo "raw rc=$? after ${SECONDS}s"; cp "$WORK/raw_metrics.jsonl" "$OUT/grpo_raw_metrics.jsonl" 2>/dev/null; tail -3 "$OUT/grpo_raw.log" ;;
trl)
  SECONDS=0
  python3 self_model/rlhf/train_grpo.py --config bench/verl_grpo_trl.yaml rl.rollout.max_response_length=$RESPONSE \
    rl.rollout.engine=${TRL_ENGINE:-vllm} > "$OUT/grpo_trl.log" 2>&1
  echo "trl rc=$? after ${SECONDS}s"; cp "$WORK/trl/manifest.json" "$OUT/grpo_trl_manifest.json" 2>/dev/null; tail -2 "$OUT/grpo_trl.log" ;;
summary)
  python3 bench/verl_grpo_summary.py "$OUT" ;;
esac
