"""The TRL backend: GRPO with `GRPOTrainer` (vLLM colocated when installed, else generate) and PPO with
`trl.experimental.ppo.PPOTrainer`, in one process (CPU or one GPU; torchrun for several)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

from self_model.config import Owned, RunConfig, from_key
from self_model.rlhf.algorithms import algorithm_name, trl_settings
from self_model.rlhf.rl_config import RLArgs, warmup_steps, world_size


def _rl(cfg: RunConfig) -> RLArgs:
    return cfg.sections["rl"]


def uses_vllm(cfg: RunConfig) -> bool:
    """vLLM rollout when asked for and installed (GRPOTrainer falls back to generate otherwise)."""
    return _rl(cfg).rollout.engine == "vllm" and importlib.util.find_spec("vllm") is not None


def rollout_note(cfg: RunConfig, stage_name: str) -> str | None:
    """Why a TRL run asked for vLLM generates with transformers instead, if it does."""
    if _rl(cfg).rollout.engine != "vllm":
        return None
    if stage_name != "grpo":
        return "TRL's PPO generates with transformers (vLLM rollout for PPO is rl.backend: verl)"
    return None if uses_vllm(cfg) else "vLLM is not installed (the gpu extra): TRL generates with transformers"


def _vllm_only(value: Callable[[RunConfig], Any]) -> Callable[[RunConfig], Any]:
    return lambda cfg: value(cfg) if uses_vllm(cfg) else None


def _algorithm(cfg: RunConfig) -> dict[str, Any]:
    """GRPOConfig fields of rl.algorithm (validation refuses those TRL cannot run before this is read)."""
    return trl_settings(cfg, algorithm_name(cfg, "grpo"))


def _updates_per_step(rl: RLArgs) -> int:
    return rl.prompts_per_step // rl.actor.ppo_mini_batch_size


def _grpo_updates(rl: RLArgs) -> int:
    """GRPOTrainer's optimizer steps per rollout step (each pass over the rollouts takes every mini-batch)."""
    return _updates_per_step(rl) * rl.actor.ppo_epochs


# rl.actor.lr_scheduler -> transformers' name (its `constant` ignores warm-up; `constant_with_warmup` is verl's constant)
TRL_SCHEDULERS = {"constant": "constant_with_warmup", "cosine": "cosine"}


def _optimizer_owned(updates_per_step: Callable[[RLArgs], int]) -> dict[str, Owned]:
    """The schedule and weight decay as verl gets them, for a trainer that steps its scheduler `updates_per_step`
    times a rollout step."""
    return {
        "lr_scheduler_type": Owned("rl.actor.lr_scheduler", lambda cfg: TRL_SCHEDULERS[_rl(cfg).actor.lr_scheduler]),
        "warmup_steps": Owned("rl.actor.warmup_ratio", lambda cfg: warmup_steps(_rl(cfg)) * updates_per_step(_rl(cfg))),
        "warmup_ratio": Owned("rl.actor.warmup_ratio"),  # deprecated alias that would replace warmup_steps
        "lr_scheduler_kwargs": Owned("rl.actor.lr_scheduler"),
        "weight_decay": from_key("rl.actor.weight_decay"),
    }


# GRPOConfig fields from our vocabulary: a step generates prompts_per_step × n answers; updates take mini-batches.
GRPO_OWNED = {
    "learning_rate": from_key("rl.actor.learning_rate"),
    **_optimizer_owned(_grpo_updates),
    "max_steps": Owned("rl.total_steps", lambda cfg: _rl(cfg).total_steps * _grpo_updates(_rl(cfg))),
    "num_generations": from_key("rl.rollout.n"),
    "temperature": from_key("rl.rollout.temperature"),
    "max_completion_length": from_key("rl.rollout.max_response_length"),
    "beta": Owned("rl.actor.kl_loss_coef", lambda cfg: _rl(cfg).actor.kl_loss_coef if _rl(cfg).actor.use_kl_loss else 0.0),
    "epsilon": Owned("rl.actor.clip_ratio", lambda cfg: _algorithm(cfg)["epsilon"]),
    "epsilon_high": Owned("rl.actor.clip_ratio_high", lambda cfg: _algorithm(cfg)["epsilon_high"]),
    "loss_type": Owned("rl.algorithm", lambda cfg: _algorithm(cfg)["loss_type"]),
    "scale_rewards": Owned("rl.algorithm", lambda cfg: _algorithm(cfg)["scale_rewards"]),
    "importance_sampling_level": Owned("rl.algorithm", lambda cfg: _algorithm(cfg).get("importance_sampling_level")),
    "mask_truncated_completions": Owned("rl.algorithm", lambda cfg: _algorithm(cfg).get("mask_truncated_completions")),
    "num_iterations": from_key("rl.actor.ppo_epochs"),
    "per_device_train_batch_size": from_key("rl.actor.ppo_micro_batch_size_per_gpu"),
    "gradient_accumulation_steps": Owned("rl.actor.ppo_mini_batch_size", lambda cfg: max(1, (
        _rl(cfg).actor.ppo_mini_batch_size * _rl(cfg).rollout.n) // (_rl(cfg).actor.ppo_micro_batch_size_per_gpu * world_size()))),
    "generation_batch_size": Owned("rl.prompts_per_step", lambda cfg: _rl(cfg).prompts_per_step * _rl(cfg).rollout.n),
    "use_vllm": Owned("rl.rollout.engine", uses_vllm),
    "vllm_mode": Owned("rl.rollout.engine", _vllm_only(lambda cfg: "colocate")),
    "vllm_gpu_memory_utilization": Owned("rl.rollout.gpu_memory_utilization",
                                         _vllm_only(lambda cfg: _rl(cfg).rollout.gpu_memory_utilization)),
    "vllm_tensor_parallel_size": Owned("rl.rollout.tensor_parallel_size",
                                       _vllm_only(lambda cfg: _rl(cfg).rollout.tensor_parallel_size)),
}
# trl.experimental.ppo PPOConfig fields from our vocabulary.
PPO_OWNED = {
    "learning_rate": from_key("rl.actor.learning_rate"),
    **_optimizer_owned(lambda rl: 1),  # one scheduler step per rollout batch
    "total_episodes": Owned("rl.total_steps", lambda cfg: _rl(cfg).total_steps * _rl(cfg).prompts_per_step),
    "num_ppo_epochs": from_key("rl.actor.ppo_epochs"),
    "response_length": from_key("rl.rollout.max_response_length"),
    "temperature": from_key("rl.rollout.temperature"),
    "kl_coef": from_key("rl.actor.kl_loss_coef"),
    "cliprange": from_key("rl.actor.clip_ratio"),
    "per_device_train_batch_size": Owned("rl.prompts_per_step", lambda cfg: max(1, _rl(cfg).prompts_per_step // world_size())),
    "num_mini_batches": Owned("rl.actor.ppo_mini_batch_size", lambda cfg: _updates_per_step(_rl(cfg))),
    "local_rollout_forward_batch_size": from_key("rl.actor.ppo_micro_batch_size_per_gpu"),
}


def build_grpo_trainer(cfg: RunConfig, model, tokenizer, training_args, train_dataset, eval_dataset, reward_funcs):
    """GRPOTrainer; a reward model (given by path) is scored with its tokenizer as train_rm.py saved it (TRL's own
    AutoTokenizer may swap its class, and with it the token ids the reward model was trained on)."""
    from trl import GRPOTrainer

    from self_model.modeling import build_peft_config, load_saved_tokenizer

    reward_tokenizers = [load_saved_tokenizer(f) if isinstance(f, str) else None for f in reward_funcs]
    return GRPOTrainer(model=model, reward_funcs=reward_funcs, args=training_args, train_dataset=train_dataset,
                       eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=build_peft_config(cfg),
                       reward_processing_classes=reward_tokenizers)


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
    load = lambda path: AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    reward_model = load(rl.reward.reward_model)
    value_model = load(rl.critic.model_name_or_path or rl.reward.reward_model)
    return PPOTrainer(args=training_args, processing_class=tokenizer, model=policy, ref_model=None,
                      reward_model=reward_model, value_model=value_model,
                      train_dataset=datasets.Dataset.from_dict({"input_ids": ids}), peft_config=build_peft_config(cfg))
