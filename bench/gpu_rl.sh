#!/usr/bin/env bash
# The RL stages on one GPU through verl (issue 13): PPO with a critic, a LoRA actor, DAPO, a killed and resumed
# GSPO run, and GRPO scored by a reward model (on verl and on TRL). Each part is one of our stage scripts on the shipped configs,
# pointed at a small random-init Qwen2 (head_dim 64, for vLLM) and GSM8K prompts from .gpu-data/gsm8k (copied from ../shared/data/gsm8k and carried).
#   LIMIT=540 bash bench/gpu_rl.sh ppo     (one part per 600 s device call, lora needs ~380 s; parts: ppo lora dapo algo resume rm rm_trl;
#   LIMIT is each stage's time limit in seconds; gpu bundle installed; logs and a summary under $OUT)
set -uo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT:-540}; OUT=${OUT:-bench/results}; mkdir -p "$OUT/logs"; RUNS=/tmp/rl; mkdir -p "$RUNS/model"
python3 -c "import json; c = json.load(open('examples/tiny/model_config.json')); c.update(hidden_size=256, \
intermediate_size=704, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, dtype='bfloat16'); \
json.dump(c, open('$RUNS/model/config.json', 'w'))"
DATA=.gpu-data/gsm8k
# the bundle installs without bytecode: compile the big packages while the first run starts Ray (vLLM's server
# start-up otherwise spends minutes compiling its imports)
[ -d /tmp/site/vllm ] && (python3 -m compileall -q -j 12 /tmp/site/vllm /tmp/site/verl /tmp/site/transformers /tmp/site/ray > /dev/null 2>&1 &)
SHAPE=(model_name_or_path=null model.init_from_config=$RUNS/model/config.json tokenizer_name_or_path=examples/tiny/tokenizer
  "data.train_file=$DATA/train.jsonl#512" data.eval_file=null rl.prompts_per_step=16 rl.actor.ppo_mini_batch_size=8
  rl.actor.ppo_micro_batch_size_per_gpu=8 rl.rollout.max_response_length=64 rl.rollout.gpu_memory_utilization=0.3)
COMMON=("${SHAPE[@]}" rl.rollout.enforce_eager=true rl.cluster.num_cpus=12)  # verl's runs
# a random model never answers GSM8K (reward 0, so no gradient): parts that check an update score digits instead
VARIED=("rl.reward.functions=[examples/tiny/rewards.py:digit_share]" rl.reward.weights=null)
GRPO=(python3 self_model/rlhf/train_grpo.py --config config/self_model_config/grpo.yaml "${COMMON[@]}")

stage() {  # name, seconds, command...: run one stage with a time limit, log to $OUT/logs/name.log
  local name=$1 limit=$2; shift 2; SECONDS=0
  timeout "$limit" "$@" > "$OUT/logs/$name.log" 2>&1; local rc=$?
  echo "$name rc=$rc ${SECONDS}s" | tee -a "$OUT/summary.txt"
  mkdir -p "$OUT/logs/ray_$name"  # the workers' own output (vLLM's engine among them), for a run that stalls
  find /tmp/ray/session_latest/logs -maxdepth 1 \( -name "*.err" -o -name "*.out" \) -size -4M \
    -exec cp {} "$OUT/logs/ray_$name/" \; 2>/dev/null
  python3 bench/verl_rl_summary.py "$RUNS/$name" >> "$OUT/summary.txt" 2>&1
}

for part in "$@"; do case "$part" in
ppo)  # PPO with a critic from the shipped ppo.yaml; critic exported too
  stage ppo "$LIMIT" python3 self_model/rlhf/train_ppo.py --config config/self_model_config/ppo.yaml "${COMMON[@]}" \
    rl.total_steps=${PPO_STEPS:-3} rl.critic.ppo_micro_batch_size_per_gpu=8 rl.critic.export=true training_args.output_dir=$RUNS/ppo overwrite=true
  ls $RUNS/ppo/hf_model $RUNS/ppo/critic_model >> "$OUT/summary.txt" 2>&1 ;;
lora)  # LoRA actor; the exported adapter loaded with PEFT on the base (a reward that varies, so the adapter moves)
  stage lora "$LIMIT" "${GRPO[@]}" rl.total_steps=2 peft.enabled=true peft.lora_r=16 peft.lora_alpha=32 \
    peft.target_modules=all-linear "${VARIED[@]}" training_args.output_dir=$RUNS/lora overwrite=true
  python3 bench/verl_lora_check.py $RUNS/lora >> "$OUT/summary.txt" 2>&1 ;;
dapo)  # DAPO: clip-higher, token-level loss, overlong penalty, dynamic sampling (a reward that varies in a group)
  stage dapo "$LIMIT" "${GRPO[@]}" rl.algorithm=dapo rl.total_steps=2 "${VARIED[@]}" rl.actor.use_kl_loss=false \
    training_args.output_dir=$RUNS/dapo overwrite=true ;;
algo)  # a few steps of one more algorithm: ALGO=rloo | reinforce_plus_plus | dr_grpo | gspo | grpo
  stage "${ALGO:-rloo}" "$LIMIT" "${GRPO[@]}" rl.algorithm=${ALGO:-rloo} rl.total_steps=2 "${VARIED[@]}" \
    training_args.output_dir=$RUNS/${ALGO:-rloo} overwrite=true ;;
resume)  # GSPO planned for 3 steps, killed after the step-2 checkpoint, then --resume
  rm -rf $RUNS/resume; SECONDS=0
  setsid "${GRPO[@]}" rl.algorithm=gspo rl.total_steps=3 rl.save_steps=1 training_args.output_dir=$RUNS/resume \
    > "$OUT/logs/resume_killed.log" 2>&1 &
  pid=$!
  until [ "$(cat $RUNS/resume/verl_checkpoints/latest_checkpointed_iteration.txt 2>/dev/null)" = 2 ] || [ $SECONDS -gt "$LIMIT" ]; do sleep 1; done
  kill -9 -- -$pid; sleep 3; ray stop --force > /dev/null 2>&1
  echo "resume: killed after step $(cat $RUNS/resume/verl_checkpoints/latest_checkpointed_iteration.txt) (${SECONDS}s)" | tee -a "$OUT/summary.txt"
  stage resume "$LIMIT" "${GRPO[@]}" rl.algorithm=gspo rl.total_steps=3 rl.save_steps=1 training_args.output_dir=$RUNS/resume --resume
  ls $RUNS/resume/verl_checkpoints/global_step_2 $RUNS/resume >> "$OUT/summary.txt" 2>&1 ;;
rm)  # reward model from train_rm.py, then GRPO on verl scored by it; verl's scores against the RM's own
  SECONDS=0
  python3 self_model/rlhf/train_rm.py --config config/examples/rm_tiny.yaml model.init_from_config=$RUNS/model/config.json \
    training_args.output_dir=$RUNS/rm > "$OUT/logs/train_rm.log" 2>&1; echo "train_rm rc=$? ${SECONDS}s" | tee -a "$OUT/summary.txt"
  stage rm_grpo "$LIMIT" python3 self_model/rlhf/train_grpo.py --config bench/verl_rm_grpo.yaml "${COMMON[@]}" rl.total_steps=2 overwrite=true
  python3 bench/verl_rm_scores.py $RUNS/rm_grpo $RUNS/rm 16 >> "$OUT/summary.txt" 2>&1 ;;
rm_trl)  # after rm, on the same machine: GRPO on the TRL backend (vLLM colocated) scored by the same reward model
  stage rm_trl "$LIMIT" python3 self_model/rlhf/train_grpo.py --config bench/trl_rm_grpo.yaml "${SHAPE[@]}" rl.total_steps=2 overwrite=true
  grep -o "'reward': [-0-9.e]*" "$OUT/logs/rm_trl.log" >> "$OUT/summary.txt" ;;
esac; done
tail -c 6000 "$OUT/summary.txt"
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
