"""The verl backend: our YAML -> verl's PPO trainer config (its packaged hydra defaults plus generated values),
validated by verl's own checks, run on Ray, and the actor exported as a Hugging Face model afterwards.

Generated keys that verl's config lacks carry a `+`, as on verl's command line; `rl.verl` keys are applied
last and must exist in verl's config unless they start with `+`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from self_model.config import PeftArgs, RunConfig
from self_model.data.built import EVAL, TRAIN
from self_model.errors import ConfigError, UserError
from self_model.rlhf import verl_workers
from self_model.rlhf.algorithms import ALGORITHMS, clip_range, overlong_buffer, verl_settings
from self_model.rlhf.rewards import canonical
from self_model.rlhf.rl_config import RLArgs, warmup_steps

REWARD_HOOK = Path(__file__).resolve().parent / "verl_reward.py"
TRACE_LOGGERS = {"none": [], "tensorboard": ["tensorboard"], "wandb": ["wandb"], "swanlab": ["swanlab"]}
METRICS_FILE = "verl_metrics.jsonl"
CHECKPOINT_DIR = "verl_checkpoints"
# words in verl's validation messages -> the keys of ours that set those values
OUR_KEYS = {
    "train_batch_size": "rl.prompts_per_step, rl.actor.ppo_mini_batch_size",
    "ppo_mini_batch_size": "rl.actor.ppo_mini_batch_size",
    "micro_batch": "rl.actor.ppo_micro_batch_size_per_gpu, rl.critic.ppo_micro_batch_size_per_gpu",
    "critic": "rl.critic",
    "rollout": "rl.rollout",
    "n_gpus": "rl.cluster",
}


def optimizer_values(prefix: str, rl: RLArgs) -> dict[str, Any]:
    """verl's schedule and weight decay from rl.actor (verl steps its scheduler once per rollout step; a warm-up of
    0 steps falls back to its ratio, 0 by default)."""
    return {f"{prefix}.lr_scheduler_type": rl.actor.lr_scheduler, f"{prefix}.lr_warmup_steps": warmup_steps(rl),
            f"{prefix}.weight_decay": rl.actor.weight_decay}


def verl_values(cfg: RunConfig, algorithm: str, model_path: str, data_files: dict[str, str], chat_template: str | None) -> dict[str, Any]:
    """verl keys and values for this run, from our sections."""
    rl: RLArgs = cfg.sections["rl"]
    out = Path(cfg.output_dir).resolve()
    micro = rl.actor.ppo_micro_batch_size_per_gpu
    has_eval = EVAL in data_files
    values: dict[str, Any] = {
        "data.train_files": [data_files[TRAIN]],
        "data.val_files": [data_files.get(EVAL, data_files[TRAIN])],
        "data.train_batch_size": rl.prompts_per_step,
        "data.max_prompt_length": rl.rollout.max_prompt_length,
        "data.max_response_length": rl.rollout.max_response_length,
        "data.filter_overlong_prompts": True,
        "data.seed": cfg.training_args.get("seed", 42),
        "actor_rollout_ref.model.path": model_path,
        "actor_rollout_ref.model.trust_remote_code": cfg.model.trust_remote_code,
        "+actor_rollout_ref.model.override_config.attn_implementation": verl_attention(cfg),
        "actor_rollout_ref.actor.optim.lr": rl.actor.learning_rate,
        **optimizer_values("actor_rollout_ref.actor.optim", rl),
        "actor_rollout_ref.actor.ppo_mini_batch_size": rl.actor.ppo_mini_batch_size,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.actor.ppo_epochs": rl.actor.ppo_epochs,
        "actor_rollout_ref.actor.clip_ratio": clip_range(cfg, algorithm)[0],
        "actor_rollout_ref.actor.use_kl_loss": rl.actor.use_kl_loss,
        "actor_rollout_ref.actor.kl_loss_coef": rl.actor.kl_loss_coef,
        "actor_rollout_ref.actor.entropy_coeff": rl.actor.entropy_coeff,
        "actor_rollout_ref.rollout.name": rl.rollout.engine,
        "actor_rollout_ref.rollout.n": rl.rollout.n,
        "actor_rollout_ref.rollout.temperature": rl.rollout.temperature,
        "actor_rollout_ref.rollout.gpu_memory_utilization": rl.rollout.gpu_memory_utilization,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": rl.rollout.tensor_parallel_size,
        "actor_rollout_ref.rollout.enforce_eager": rl.rollout.enforce_eager,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": micro,
        "trainer.total_training_steps": rl.total_steps,
        "trainer.n_gpus_per_node": rl.cluster.n_gpus_per_node,
        "trainer.nnodes": rl.cluster.nnodes,
        "trainer.logger": ["console", "file", *(b for t in cfg.trace for b in TRACE_LOGGERS[t])],
        "trainer.project_name": "self_model",
        "trainer.experiment_name": out.name,
        "trainer.default_local_dir": str(out / CHECKPOINT_DIR),
        "trainer.save_freq": rl.save_steps or rl.total_steps,
        "trainer.test_freq": rl.total_steps if has_eval else -1,
        "trainer.val_before_train": bool(has_eval and cfg.eval_before_training),
        "ray_kwargs.ray_init.num_cpus": rl.cluster.num_cpus,
        "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH": str(metrics_file(out, bool(cfg.resume))),
        # each worker loads tokenizers as they were saved, and the critic with the configured attention
        "+ray_kwargs.ray_init.runtime_env.worker_process_setup_hook": verl_workers.SETUP_HOOK,
        **resume_values(cfg),
        **verl_settings(cfg, algorithm),
    }
    if chat_template:
        values["actor_rollout_ref.model.custom_chat_template"] = chat_template
    if isinstance(cfg.model.gradient_checkpointing, bool):  # `auto` keeps verl's default (on)
        values["actor_rollout_ref.model.enable_gradient_checkpointing"] = cfg.model.gradient_checkpointing
        if ALGORITHMS[algorithm].critic:
            values["critic.model.enable_gradient_checkpointing"] = cfg.model.gradient_checkpointing
    if cfg.peft.enabled:  # what verl cannot honour of `peft` is refused by rl_config.verl_peft_problems
        values["actor_rollout_ref.model.lora_rank"] = cfg.peft.lora_r
        values["actor_rollout_ref.model.lora_alpha"] = cfg.peft.lora_alpha
        values["actor_rollout_ref.model.target_modules"] = cfg.peft.target_modules
        values["actor_rollout_ref.model.exclude_modules"] = cfg.peft.exclude_modules
        # verl's default FSDP1 wraps the PeftModel's layers, so peft 0.21's adapter state dict (matched by module
        # name) comes back empty and vLLM gets an empty adapter at the first sync; FSDP2 keeps the module names
        values["actor_rollout_ref.actor.strategy"] = "fsdp2"
        # as verl's LoRA recipe (load_format safetensors): vLLM loads the base weights from disk and each sync sends
        # the adapter alone; `auto` also reads a model saved as .bin
        values["actor_rollout_ref.rollout.load_format"] = "auto"
    if rl.cluster.ray_address:
        values["+ray_kwargs.ray_init.address"] = rl.cluster.ray_address
    if ALGORITHMS[algorithm].critic:
        values.update({
            "critic.enable": True,
            "critic.model.path": rl.critic.model_name_or_path or model_path,
            "+critic.model.override_config.attn_implementation": verl_attention(cfg),
            "critic.optim.lr": rl.critic.learning_rate,
            **optimizer_values("critic.optim", rl),
            "critic.ppo_micro_batch_size_per_gpu": rl.critic.ppo_micro_batch_size_per_gpu,
        })
    if rl.reward.reward_model:
        values.update({
            "reward.reward_model.enable": True,
            "reward.reward_model.model_path": rl.reward.reward_model,
            "reward.reward_model.rollout.name": "vllm",
            "reward.reward_model.rollout.tensor_model_parallel_size": rl.rollout.tensor_parallel_size,
        })
    else:
        buffer = overlong_buffer(cfg, algorithm)
        values.update({
            "reward.custom_reward_function.path": str(REWARD_HOOK),
            "reward.custom_reward_function.name": "compute_score",
            "+reward.custom_reward_function.reward_kwargs.functions": [canonical(spec) for spec in rl.reward.functions],
            "+reward.custom_reward_function.reward_kwargs.weights": rl.reward.weights or [1.0] * len(rl.reward.functions),
            "+reward.custom_reward_function.reward_kwargs.lenient": rl.reward.lenient,
            "reward.reward_manager.source": "importlib",
            "reward.reward_manager.module.path": str(REWARD_HOOK),
            "reward.reward_manager.name": "OverlongRewardManager" if buffer else "RewardManager",
        })
        if buffer:  # read by verl's DAPO reward manager
            values["+reward.reward_kwargs"] = {"max_resp_len": rl.rollout.max_response_length, "overlong_buffer_cfg": {
                "enable": True, "len": buffer, "penalty_factor": 1.0, "log": True}}
    return values


def resume_values(cfg: RunConfig) -> dict[str, Any]:
    """verl's own resume: --resume continues from the last checkpoint in output_dir/verl_checkpoints (model,
    optimizer, step count and the dataloader's position), resume=PATH from that global_step_N directory."""
    if isinstance(cfg.resume, str):
        return {"trainer.resume_mode": "resume_path", "trainer.resume_from_path": str(Path(cfg.resume).resolve())}
    return {"trainer.resume_mode": "auto" if cfg.resume else "disable"}


def last_checkpoint(output_dir: Path) -> str | None:
    """The newest verl checkpoint of a run (what `--resume` continues from), or None."""
    marker = output_dir / CHECKPOINT_DIR / "latest_checkpointed_iteration.txt"
    if not marker.is_file():
        return None
    step = output_dir / CHECKPOINT_DIR / f"global_step_{marker.read_text().strip()}"
    return str(step) if step.is_dir() else None


def metrics_file(output_dir: Path, resume: bool) -> Path:
    """Where verl's file logger writes (it truncates its file, so each resumed attempt gets its own)."""
    if not resume:
        return output_dir / METRICS_FILE
    return output_dir / f"{Path(METRICS_FILE).stem}.resumed-{len(list(output_dir.glob('verl_metrics*.jsonl')))}.jsonl"


def verl_attention(cfg: RunConfig) -> str:
    """The attention verl's workers load the models with: `auto` is SDPA (rl_checks refuses `varlen` there)."""
    return "sdpa" if cfg.model.attn_implementation == "auto" else cfg.model.attn_implementation


def compose(values: dict[str, Any], passthrough: dict[str, Any]):
    """verl's packaged ppo_trainer config with our values, then the `rl.verl` passthrough, set on top."""
    import verl
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        conf = hydra_compose(config_name="ppo_trainer")
    problems = []
    for origin, items in (("generated", values), ("rl.verl", passthrough)):
        for key, value in items.items():
            problem = _set(conf, key, value)
            if problem:
                problems.append(f"{'rl.verl.' + key if origin == 'rl.verl' else key}: {problem}")
    if problems:
        raise ConfigError(problems, "verl config")
    return conf


def _set(conf, key: str, value: Any) -> str | None:
    from omegaconf import DictConfig, OmegaConf

    add = key.startswith("+")
    key = key.lstrip("+")
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(conf, parent_key) if parent_key else conf
    if not add and not (isinstance(parent, DictConfig) and leaf in parent.keys()):  # noqa: SIM118 (keys(): `???` values count)
        return "verl's config has no such key (check the spelling, or prefix it with + to add it)"
    OmegaConf.update(conf, key, value, merge=False, force_add=add)
    return None


def validate(conf) -> list[str]:
    """verl's own validation of the composed config (no GPU, no Ray); returns notes for checks it could not run."""
    from hydra.errors import InstantiationException
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    try:
        validate_config(config=conf, use_reference_policy=need_reference_policy(conf), use_critic=need_critic(conf))
    except (AssertionError, ValueError, InstantiationException, OSError) as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err  # the dataclass's own error
        message = " ".join(str(cause).split()) or type(cause).__name__
        if "vllm version" in message and not _has_vllm():
            return ["vLLM is not installed here, so verl's LoRA-with-vLLM checks run on the GPU machine"]
        ours = sorted({keys for word, keys in OUR_KEYS.items() if word in message})
        hint = f" (set by {'; '.join(ours)})" if ours else ""
        raise ConfigError([f"verl rejected the generated config: {message}{hint}"], "verl config") from None
    return []


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def run(conf) -> None:
    """verl's PPO trainer on Ray (starts a local Ray, or joins ray_kwargs.ray_init.address)."""
    import torch

    if not torch.cuda.is_available():
        raise UserError("rl.backend: verl needs CUDA GPUs; use --dry-run here to check the config, or rl.backend: trl")
    from verl.trainer.main_ppo import main as verl_main

    verl_main(conf)


def export(output_dir: Path, role: str, target: Path) -> Path:
    """The last checkpoint of `actor` or `critic` as a Hugging Face model directory (verl's model merger; with
    LoRA the base weights plus `lora_adapter/`, a PEFT adapter)."""
    checkpoint = last_checkpoint(output_dir)
    if checkpoint is None:
        raise UserError(f"verl left no checkpoint in {output_dir / CHECKPOINT_DIR} to export")
    command = [sys.executable, "-m", "verl.model_merger", "merge", "--backend", "fsdp", "--local_dir",
               str(Path(checkpoint) / role), "--target_dir", str(target)]
    subprocess.run(command, check=True)
    return target


def split_lora_export(exported: Path, base: str, adapter_dir: Path, tokenizer, peft: PeftArgs) -> Path:
    """verl's merger leaves the base's (unchanged) weights in `exported` and the adapter in `exported/lora_adapter`,
    so whatever opened `exported` ran the base. Move the adapter to `adapter_dir`, recording its base for PEFT, and
    make `exported` the merged policy; returns the adapter directory."""
    from self_model.merge_lora import merge
    from self_model.outputs import OutputDir

    kept = f"the checkpoints in {exported.parent / CHECKPOINT_DIR} are kept"
    config_file = exported / "lora_adapter" / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"verl's export of the LoRA actor wrote no {config_file}; {kept}")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if (config.get("r"), config.get("lora_alpha")) != (peft.lora_r, peft.lora_alpha):  # verl writes alpha 0 when it lost the run's
        raise UserError(f"verl exported the adapter with r {config.get('r')}, lora_alpha {config.get('lora_alpha')}; "
                        f"the run trained r {peft.lora_r}, lora_alpha {peft.lora_alpha}; {kept}")
    config["base_model_name_or_path"] = str(Path(base).resolve()) if Path(base).exists() else base
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    shutil.rmtree(adapter_dir, ignore_errors=True)
    shutil.move(config_file.parent, adapter_dir)
    tokenizer.save_pretrained(str(adapter_dir))
    try:
        merge(OutputDir(str(adapter_dir), config["base_model_name_or_path"]), str(exported), overwrite=True)
    except BaseException:
        shutil.rmtree(exported, ignore_errors=True)  # it holds the untrained base: never leave that as the policy
        raise
    return adapter_dir


def read_metrics(output_dir: Path) -> list[dict]:
    """verl's per-step metrics (its `file` logger), in step order; a resumed attempt's steps replace earlier ones."""
    by_step = {}
    for path in sorted(output_dir.glob("verl_metrics*.jsonl"), key=lambda p: p.stat().st_mtime):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                by_step[row["step"]] = {"step": row["step"], **row["data"]}
    return [by_step[step] for step in sorted(by_step)]
