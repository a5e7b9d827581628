"""The TRL backend: GRPO with `GRPOTrainer` (vLLM colocated when installed, else generate) and PPO with
`trl.experimental.ppo.PPOTrainer`, in one process (CPU or one GPU; torchrun for several)."""

from __future__ import annotations

import importlib.util
import os

from self_model.config import RunConfig
from self_model.rlhf.rl_config import RLArgs

# training_args fields our `rl` section sets, per algorithm (the value names our key)
GRPO_OWNED = {
    "learning_rate": "rl.actor.learning_rate", "max_steps": "rl.total_steps", "num_generations": "rl.rollout.n",
    "temperature": "rl.rollout.temperature", "max_completion_length": "rl.rollout.max_response_length",
    "beta": "rl.actor.kl_loss_coef", "epsilon": "rl.actor.clip_ratio", "num_iterations": "rl.actor.ppo_epochs",
    "per_device_train_batch_size": "rl.actor.ppo_micro_batch_size_per_gpu",
    "gradient_accumulation_steps": "rl.actor.ppo_mini_batch_size", "generation_batch_size": "rl.prompts_per_step",
    "use_vllm": "rl.rollout.engine", "vllm_mode": "rl.rollout.engine",
    "vllm_gpu_memory_utilization": "rl.rollout.gpu_memory_utilization",
}
PPO_OWNED = {
    "learning_rate": "rl.actor.learning_rate", "total_episodes": "rl.total_steps", "num_ppo_epochs": "rl.actor.ppo_epochs",
    "response_length": "rl.rollout.max_response_length", "temperature": "rl.rollout.temperature",
    "kl_coef": "rl.actor.kl_loss_coef", "cliprange": "rl.actor.clip_ratio",
    "per_device_train_batch_size": "rl.prompts_per_step", "num_mini_batches": "rl.actor.ppo_mini_batch_size",
    "local_rollout_forward_batch_size": "rl.actor.ppo_micro_batch_size_per_gpu",
}


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def grpo_args(rl: RLArgs) -> dict:
    """GRPOConfig fields from our vocabulary: a step generates prompts_per_step × n answers; updates take mini-batches."""
    completions_per_update = rl.actor.ppo_mini_batch_size * rl.rollout.n
    use_vllm = rl.rollout.engine == "vllm" and importlib.util.find_spec("vllm") is not None
    args = {
        "learning_rate": rl.actor.learning_rate,
        "max_steps": rl.total_steps * (rl.prompts_per_step // rl.actor.ppo_mini_batch_size) * rl.actor.ppo_epochs,
        "num_generations": rl.rollout.n,
        "temperature": rl.rollout.temperature,
        "max_completion_length": rl.rollout.max_response_length,
        "beta": rl.actor.kl_loss_coef if rl.actor.use_kl_loss else 0.0,
        "epsilon": rl.actor.clip_ratio,
        "num_iterations": rl.actor.ppo_epochs,
        "per_device_train_batch_size": rl.actor.ppo_micro_batch_size_per_gpu,
        "gradient_accumulation_steps": max(1, completions_per_update // (rl.actor.ppo_micro_batch_size_per_gpu * world_size())),
        "generation_batch_size": rl.prompts_per_step * rl.rollout.n,
        "use_vllm": use_vllm,
    }
    if use_vllm:
        args.update(vllm_mode="colocate", vllm_gpu_memory_utilization=rl.rollout.gpu_memory_utilization)
    return args


def ppo_args(rl: RLArgs) -> dict:
    """trl.experimental.ppo PPOConfig fields from our vocabulary."""
    return {
        "learning_rate": rl.actor.learning_rate,
        "total_episodes": rl.total_steps * rl.prompts_per_step,
        "num_ppo_epochs": rl.actor.ppo_epochs,
        "response_length": rl.rollout.max_response_length,
        "temperature": rl.rollout.temperature,
        "kl_coef": rl.actor.kl_loss_coef,
        "cliprange": rl.actor.clip_ratio,
        "per_device_train_batch_size": max(1, rl.prompts_per_step // world_size()),
        "num_mini_batches": rl.prompts_per_step // rl.actor.ppo_mini_batch_size,
        "local_rollout_forward_batch_size": rl.actor.ppo_micro_batch_size_per_gpu,
    }


def build_grpo_trainer(cfg: RunConfig, model, tokenizer, training_args, train_dataset, eval_dataset, reward_funcs):
    from trl import GRPOTrainer

    from self_model.modeling import build_peft_config

    return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=training_args, train_dataset=train_dataset,
                       eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=build_peft_config(cfg))


def build_ppo_trainer(cfg: RunConfig, policy, tokenizer, training_args, prompts: list[list[dict]]):
    """PPOTrainer with the reward model from rl.reward.reward_model and a value model (rl.critic, else the RM)."""
    import datasets
    from transformers import AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOTrainer

    from self_model.modeling import build_peft_config

    rl: RLArgs = cfg.sections["rl"]
    tokenizer.padding_side = "left"  # generation continues the prompts from the right
    ids = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
           for p in prompts]
    load = lambda path: AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)  # noqa: E731
    reward_model = load(rl.reward.reward_model)
    value_model = load(rl.critic.model_name_or_path or rl.reward.reward_model)
    return PPOTrainer(args=training_args, processing_class=tokenizer, model=policy, ref_model=None,
                      reward_model=reward_model, value_model=value_model,
                      train_dataset=datasets.Dataset.from_dict({"input_ids": ids}), peft_config=build_peft_config(cfg))
