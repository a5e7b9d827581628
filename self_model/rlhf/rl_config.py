"""The `rl` section of the PPO/GRPO stages and its rules (the prompts' `data` section is `self_model.data.rl`).

One vocabulary for both backends: a *step* is one rollout of `prompts_per_step` prompts with `rollout.n`
answers each, followed by the policy updates on them (`actor.ppo_mini_batch_size` prompts per optimizer
step). The verl backend turns these into verl's keys (`verl_backend.py`), the TRL backend into TRL's
config fields (`trl_backend.py`); `rl.verl` passes any verl key through verbatim.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from self_model.config import RunConfig, option
from self_model.rlhf.algorithms import algorithm_name, algorithm_problems
from self_model.rlhf.rewards import MATH_REWARDS


@dataclass
class RolloutArgs:
    engine: Literal["vllm", "hf"] = option("Generation engine: vllm, or hf (transformers generate, slower).", "vllm")
    n: int = option("Answers sampled per prompt (GRPO compares them; at least 2).", 4)
    temperature: float = option("Sampling temperature.", 1.0)
    max_prompt_length: int = option("Prompts longer than this many tokens are left out (the count is reported).", 512)
    max_response_length: int = option("Most tokens generated per answer.", 512)
    gpu_memory_utilization: float = option("Share of GPU memory vLLM may take (colocated with training).", 0.5)
    tensor_parallel_size: int = option("GPUs per vLLM engine.", 1)
    enforce_eager: bool = option("vLLM without CUDA graphs: starts faster, generates slower.", False)


@dataclass
class ActorArgs:
    learning_rate: float = option("Policy learning rate.", 1e-6)
    lr_scheduler: Literal["constant", "cosine"] = option(
        "Learning-rate schedule over the run's steps, the same on both backends (the critic's too): constant, or "
        "cosine down to 0 (verl has these two).", "cosine")
    warmup_ratio: float = option("Share of the run's steps (rounded up to whole rollout steps) over which the "
                                 "learning rate rises from 0, on both backends.", 0.0)
    weight_decay: float = option("AdamW weight decay on both backends (their own defaults: verl 0.01, TRL 0). verl "
                                 "decays every weight, TRL not biases and norms.", 0.0)
    ppo_mini_batch_size: int = option("Prompts (with all their answers) per optimizer step.", 16)
    ppo_micro_batch_size_per_gpu: int = option("Sequences per forward/backward pass on one GPU.", 4)
    ppo_epochs: int = option("Passes over each step's rollouts.", 1)
    clip_ratio: float = option("Clip range of the policy ratio (the lower one; the algorithm's paper value when unset, "
                               "e.g. GSPO 3e-4).", 0.2)
    clip_ratio_high: float | None = option("Upper clip range (clip-higher); null: the algorithm's (DAPO 0.28), else "
                                           "clip_ratio.", None)
    use_kl_loss: bool = option("Add a KL penalty to the reference policy to the loss (needs a reference model).", True)
    kl_loss_coef: float = option("Weight of that KL penalty.", 0.001)
    entropy_coeff: float = option("Weight of the entropy bonus.", 0.0)


@dataclass
class CriticArgs:
    model_name_or_path: str | None = option("Value model for PPO; null starts it from the policy's model.", None)
    learning_rate: float = option("Critic learning rate.", 1e-5)
    ppo_micro_batch_size_per_gpu: int = option("Sequences per critic forward/backward pass on one GPU.", 4)
    export: bool = option("Also export the trained critic to output_dir/critic_model (verl).", False)


@dataclass
class RewardArgs:
    functions: list[str] = option(
        "Reward functions, by name (math_accuracy, answer_format, length_penalty) or path/to/file.py:function; "
        "their weighted sum is the reward.", ["math_accuracy"])
    weights: list[float] | None = option("One weight per function; null weighs each 1.", None)
    reward_model: str | None = option(
        "A reward model directory from train_rm.py (its `merged/` folder after LoRA) scoring the answers instead "
        "of functions (set functions: []).", None)
    lenient: bool = option(
        "math_accuracy also credits the last number when no answer is marked, the last of several answers and "
        "truncated answers (easy to game: off by default).", False)
    overlong_buffer: int | None = option(
        "verl: the reward falls linearly to -1 over the last this many tokens before max_response_length; null: the "
        "algorithm's (DAPO: a fifth of the length, others none), 0: off.", None)


@dataclass
class ClusterArgs:
    nnodes: int = option("Machines in the Ray cluster.", 1)
    n_gpus_per_node: int = option("GPUs used on each machine.", 1)
    ray_address: str | None = option("Join this Ray cluster (e.g. `auto` or `10.0.0.1:6379`); null starts a local Ray.", None)
    num_cpus: int | None = option("CPUs a local Ray may use; null lets Ray count them.", None)


@dataclass
class RLArgs:
    """PPO / GRPO: backend, rollout, actor, critic, reward, cluster."""

    backend: Literal["verl", "trl"] = option("verl (Ray, FSDP, vLLM; GPUs) or trl (one process; CPU or one GPU).", "verl")
    algorithm: Literal["ppo", "grpo", "dr_grpo", "rloo", "reinforce_plus_plus", "dapo", "gspo"] | None = option(
        "Policy-gradient algorithm (self_model/rlhf/algorithms.py); null: the stage's own (grpo, ppo). Critic-free "
        "ones run in train_grpo.py.", None)
    total_steps: int = option("Rollout steps to train for.", 100)
    prompts_per_step: int = option("Prompts sampled per step.", 32)
    save_steps: int | None = option("Save a checkpoint every this many steps (verl); null saves at the end only.", None)
    rollout: RolloutArgs = field(default_factory=RolloutArgs)
    actor: ActorArgs = field(default_factory=ActorArgs)
    critic: CriticArgs = field(default_factory=CriticArgs)
    reward: RewardArgs = field(default_factory=RewardArgs)
    cluster: ClusterArgs = field(default_factory=ClusterArgs)
    verl: dict[str, Any] = option(
        "Any verl key, passed through verbatim and applied last, e.g. {trainer.val_before_train: true}; "
        "prefix a key verl's config lacks with + (as on verl's command line).", {})


def warmup_steps(rl: RLArgs) -> int:
    """Rollout steps of learning-rate warm-up (both backends count them so)."""
    return math.ceil(round(rl.actor.warmup_ratio * rl.total_steps, 9))


def world_size() -> int:
    """Processes of a TRL-backend run (torchrun's WORLD_SIZE; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rl_checks(cfg: RunConfig, algorithm: str) -> list[tuple[str, str]]:
    """Rules of the `rl` section, in our keys (verl's own validation runs after, on the generated config);
    `algorithm` is the stage's (grpo: every critic-free algorithm, ppo)."""
    rl: RLArgs = cfg.sections["rl"]
    problems = algorithm_problems(cfg, algorithm)
    gpus = rl.cluster.nnodes * rl.cluster.n_gpus_per_node
    if algorithm_name(cfg, algorithm) in GROUP_ALGORITHMS and rl.rollout.n < 2:
        problems.append(("rl.rollout.n", f"{algorithm_name(cfg, algorithm)} compares several answers to each prompt: "
                         f"need n >= 2, got {rl.rollout.n}"))
    if rl.reward.lenient and not set(MATH_REWARDS) & set(rl.reward.functions):
        problems.append(("rl.reward.lenient", "applies to math_accuracy only, which is not among rl.reward.functions"))
    if rl.prompts_per_step % rl.actor.ppo_mini_batch_size:
        problems.append(("rl.actor.ppo_mini_batch_size", f"prompts_per_step ({rl.prompts_per_step}) must be a multiple "
                         f"of ppo_mini_batch_size ({rl.actor.ppo_mini_batch_size})"))
    if rl.backend == "verl" and (rl.prompts_per_step * rl.rollout.n) % gpus:
        problems.append(("rl.prompts_per_step", f"prompts_per_step ({rl.prompts_per_step}) × rollout.n ({rl.rollout.n}) "
                         f"must divide evenly over the {gpus} GPUs (nnodes × n_gpus_per_node)"))
    if rl.backend == "verl" and (rl.actor.ppo_mini_batch_size * rl.rollout.n) % (rl.actor.ppo_micro_batch_size_per_gpu * gpus):
        problems.append(("rl.actor.ppo_micro_batch_size_per_gpu",
                         f"ppo_mini_batch_size ({rl.actor.ppo_mini_batch_size}) × rollout.n ({rl.rollout.n}) must be a "
                         f"multiple of ppo_micro_batch_size_per_gpu ({rl.actor.ppo_micro_batch_size_per_gpu}) × {gpus} GPUs"))
    if not 0 <= rl.actor.warmup_ratio < 1:
        problems.append(("rl.actor.warmup_ratio", f"a share of the run's steps: 0 <= warmup_ratio < 1, got {rl.actor.warmup_ratio}"))
    if rl.actor.weight_decay < 0:
        problems.append(("rl.actor.weight_decay", f"must be 0 or more, got {rl.actor.weight_decay}"))
    if rl.reward.weights is not None and len(rl.reward.weights) != len(rl.reward.functions):
        problems.append(("rl.reward.weights", f"{len(rl.reward.weights)} weights for {len(rl.reward.functions)} functions"))
    if rl.reward.reward_model and rl.reward.functions:
        problems.append(("rl.reward.functions", "a reward model scores the answers: set functions: [] (or drop reward_model)"))
    if not rl.reward.reward_model and not rl.reward.functions:
        problems.append(("rl.reward", "nothing scores the answers: name reward functions or a reward_model"))
    if algorithm == "grpo" and rl.critic.model_name_or_path:
        problems.append(("rl.critic.model_name_or_path", "GRPO uses no critic; remove it (or train with PPO)"))
    if algorithm == "ppo" and rl.backend == "trl" and not rl.reward.reward_model:
        problems.append(("rl.reward.reward_model", "TRL's PPO scores answers with a reward model (from train_rm.py); "
                         "rule-based rewards run with rl.backend: verl, or with GRPO"))
    if rl.backend == "verl":
        for key in sorted(set(cfg.training_args) - {"output_dir", "seed"}):
            problems.append((f"training_args.{key}", "used by rl.backend: trl only; with verl set rl.* or rl.verl"))
    if cfg.resume and rl.backend == "trl" and algorithm == "ppo":
        problems.append(("resume", "TRL's experimental PPOTrainer cannot resume (its train() restarts at step 0); "
                         "resume PPO with rl.backend: verl, or start over"))
    if rl.backend == "verl" and ("trainer.resume_mode" in rl.verl or "trainer.resume_from_path" in rl.verl):
        problems.append(("rl.verl", "resume with --resume (or resume: PATH to a global_step_N directory), not verl's "
                         "trainer.resume_mode / resume_from_path"))
    if rl.backend == "trl" and algorithm == "ppo" and cfg.was_set("rl.critic.learning_rate"):
        problems.append(("rl.critic.learning_rate", "TRL's PPO trains policy and value with one optimizer at "
                         "rl.actor.learning_rate: remove it, or use rl.backend: verl"))
    if rl.backend == "trl" and rl.critic.export:
        problems.append(("rl.critic.export", "exporting the critic is verl's (rl.backend: verl)"))
    if rl.backend == "trl" and rl.cluster != ClusterArgs():
        problems.append(("rl.cluster", "used by rl.backend: verl only; launch the TRL backend with torchrun for several GPUs"))
    if rl.backend == "trl" and rl.rollout.enforce_eager:
        problems.append(("rl.rollout.enforce_eager", "TRL's colocated vLLM has no such switch (it captures CUDA graphs); "
                         "it applies to rl.backend: verl"))
    if rl.rollout.tensor_parallel_size < 1:
        problems.append(("rl.rollout.tensor_parallel_size", f"must be 1 or more, got {rl.rollout.tensor_parallel_size}"))
    elif rl.backend == "trl" and algorithm == "grpo" and world_size() % rl.rollout.tensor_parallel_size:
        from self_model.rlhf.trl_backend import uses_vllm  # (that module imports this one)

        if uses_vllm(cfg):
            problems.append(("rl.rollout.tensor_parallel_size", f"{rl.rollout.tensor_parallel_size} must divide the "
                             f"number of processes ({world_size()}; torchrun's --nproc_per_node): TRL's colocated vLLM "
                             "groups them"))
    if rl.backend == "trl" and algorithm == "ppo":
        written = [key for key in ("engine", "gpu_memory_utilization", "tensor_parallel_size")
                   if cfg.was_set(f"rl.rollout.{key}") and (key != "engine" or rl.rollout.engine == "vllm")]
        problems += [(f"rl.rollout.{key}", "TRL's PPO generates with transformers, not vLLM: remove it (or set "
                      "engine: hf), or use rl.backend: verl") for key in written]
    if rl.backend == "trl" and rl.verl:
        problems.append(("rl.verl", "verl keys do nothing with rl.backend: trl; remove them"))
    if rl.backend == "trl" and rl.actor.entropy_coeff:
        problems.append(("rl.actor.entropy_coeff", "TRL's trainers have no entropy bonus; it applies to rl.backend: verl"))
    if rl.cluster.ray_address and rl.cluster.num_cpus:
        problems.append(("rl.cluster.num_cpus", "a Ray cluster that is joined counts its own CPUs; remove num_cpus"))
    if rl.backend == "verl" and cfg.peft.enabled:
        problems += verl_peft_problems(cfg)
    if rl.backend == "verl" and cfg.model.attn_implementation == "varlen":
        problems.append(("model.attn_implementation", "varlen is this project's attention for the TRL/transformers "
                         "stages; verl's workers pack sequences their own way: use auto (sdpa) or flash_attention_2"))
    return problems


GROUP_ALGORITHMS = ("grpo", "dr_grpo", "rloo", "dapo", "gspo")  # advantages from comparing a prompt's answers


def verl_peft_problems(cfg: RunConfig) -> list[tuple[str, str]]:
    """The `peft` settings verl's FSDP workers cannot honour (they build a plain LoRA from rank, alpha, target and
    excluded modules)."""
    peft, problems = cfg.peft, []
    if peft.method != "lora":
        problems.append(("peft.method", f"verl trains plain LoRA only, not {peft.method}; use method: lora, or "
                         "rl.backend: trl"))
    if cfg.was_set("peft.lora_dropout") and peft.lora_dropout:
        problems.append(("peft.lora_dropout", f"verl's LoRA has no dropout; remove it (or set 0), got {peft.lora_dropout}"))
    if peft.modules_to_save:
        problems.append(("peft.modules_to_save", "verl cannot train whole modules beside the adapter; remove it, or "
                         "use rl.backend: trl"))
    return problems
