"""What train_grpo.py and train_ppo.py share: the stage description, data, and the run on either backend."""

from __future__ import annotations

from pathlib import Path

from self_model.config import RunConfig, StageSpec, replace_model
from self_model.data.built import EVAL, TRAIN
from self_model.data.rl import RLDataArgs, build_prompts
from self_model.modeling import load_model
from self_model.report import write_report
from self_model.rlhf import rewards, trl_backend, verl_backend
from self_model.rlhf.algorithms import algorithm_name
from self_model.rlhf.rl_config import RLArgs, rl_checks
from self_model.runs import RunDir
from self_model.stage import describe_metrics, fit, open_stage, present_data, save_final, say
from self_model.template import ChatTemplate

INITIAL_MODEL = "initial_model"  # model.init_from_config, saved for verl (which loads models by path)
HF_MODEL = "hf_model"  # verl's final actor as a Hugging Face model
CRITIC_MODEL = "critic_model"  # and the critic, when rl.critic.export
LORA_ADAPTER = "lora_adapter"  # with peft.enabled: the actor's adapter (hf_model is then base and adapter merged)
CONFIG_CLASSES = {"grpo": "trl.trainer.grpo_config:GRPOConfig", "ppo": "trl.experimental.ppo.ppo_config:PPOConfig"}


def stage_spec(algorithm: str) -> StageSpec:
    return StageSpec(
        name=algorithm,
        training_args_class=CONFIG_CLASSES[algorithm],
        sections={"rl": RLArgs},
        data_class=RLDataArgs,
        owned_training_args=trl_backend.GRPO_OWNED if algorithm == "grpo" else trl_backend.PPO_OWNED,
        checks=lambda cfg: rl_checks(cfg, algorithm),
    )


def train(cfg: RunConfig, stage: StageSpec, dry_run: bool = False):
    """Run the stage on the configured backend; returns the TRL trainer (None for verl and for a dry run)."""
    rl: RLArgs = cfg.sections["rl"]
    algorithm = algorithm_name(cfg, stage.name)
    # with verl, the training-args class only carries output_dir and seed: verl gets our sections directly
    run, training_args, tokenizer, renderer = open_stage(
        cfg, stage, dry_run, owned=rl.backend == "trl",
        last_checkpoint=verl_backend.last_checkpoint if rl.backend == "verl" else None)
    functions = [rewards.resolve(spec, rl.reward.lenient) for spec in rl.reward.functions]
    data = build_prompts(cfg.data, tokenizer, rl.rollout.max_prompt_length, training_args.seed, cfg.data.preview_examples)
    if rl.backend == "verl":
        return run_verl(cfg, algorithm, run, tokenizer, renderer, data, training_args, dry_run)
    if algorithm == "dapo":
        say("note: DAPO on the TRL backend: token-level loss, clip-higher and truncated answers masked; dynamic "
            "sampling and the overlong penalty are verl's (rl.backend: verl)")
    if note := trl_backend.rollout_note(cfg, stage.name):
        say(f"note: rl.rollout.engine is vllm, but {note}")
    if present_data(run, cfg, data, tokenizer, dry_run):
        return None
    if not cfg.model_name_or_path:  # TRL loads the reference model from the policy's path
        save_initial_model(cfg, tokenizer, training_args, run.path / INITIAL_MODEL, weights=True)
        cfg = replace_model(cfg, str(run.path / INITIAL_MODEL))
    model = load_model(cfg, tokenizer, training_args)
    if stage.name == "grpo":
        # a reward model is given to TRL by path: it loads it with its tokenizer and scores the chat-rendered texts
        reward_funcs = [rl.reward.reward_model] if rl.reward.reward_model else rewards.trl_reward_funcs(
            functions, tokenizer.eos_token_id, rl.rollout.max_response_length)
        trainer = trl_backend.build_grpo_trainer(cfg, model, tokenizer, training_args, data.dataset(TRAIN),
                                                 data.dataset(EVAL), reward_funcs)
    else:
        trainer = trl_backend.build_ppo_trainer(cfg, model, tokenizer, training_args, [r["prompt"] for r in data.train])
    metrics = fit(trainer, run, cfg.eval_before_training and stage.name == "grpo")
    reward_key = "reward" if stage.name == "grpo" else "objective/scores"
    metrics.update(reward_curve([e for e in trainer.state.log_history if reward_key in e], reward_key))
    if "reward_first" not in metrics:
        say("note: no reward was logged (lower training_args.logging_steps)")
    save_final(trainer, tokenizer, renderer, run, cfg, algorithm, data, metrics, backend="trl")
    return trainer


def run_verl(cfg: RunConfig, algorithm: str, run: RunDir, tokenizer, renderer, data, training_args, dry_run: bool):
    """Convert the data, build and validate verl's config, write it next to the outputs; then run and export."""
    rl: RLArgs = cfg.sections["rl"]
    files = data.write_parquet(run.path / "data")
    model_path = cfg.model_name_or_path or str(run.path / INITIAL_MODEL)
    if not cfg.model_name_or_path:
        save_initial_model(cfg, tokenizer, training_args, Path(model_path), weights=not dry_run)
    chat_template = renderer.to_jinja() if isinstance(renderer, ChatTemplate) else None
    conf = verl_backend.compose(verl_backend.verl_values(cfg, algorithm, model_path, files, chat_template), rl.verl)
    notes = verl_backend.validate(conf)
    from omegaconf import OmegaConf

    (run.path / "verl_config.yaml").write_text(OmegaConf.to_yaml(conf), encoding="utf-8")
    for note in notes:
        say(f"note: {note}")
    gpus = rl.cluster.nnodes * rl.cluster.n_gpus_per_node
    say(f"verl {algorithm}: {rl.total_steps} steps of {rl.prompts_per_step} prompts × {rl.rollout.n} answers on {gpus} "
        f"GPU(s), rollout {rl.rollout.engine}; config validated by verl and written to {run.path / 'verl_config.yaml'}")
    if present_data(run, cfg, data, tokenizer, dry_run):
        return None
    run.write_yaml("config.yaml", cfg.resolved)
    verl_backend.run(conf)
    exported = verl_backend.export(run.path, "actor", run.path / HF_MODEL)
    tokenizer.save_pretrained(str(exported))
    if cfg.peft.enabled:
        adapter = verl_backend.split_lora_export(exported, model_path, run.path / LORA_ADAPTER, tokenizer, cfg.peft)
        say(f"LoRA adapter: {adapter} (its base: {model_path}); {exported} holds the merged policy")
    if rl.critic.export:
        tokenizer.save_pretrained(str(verl_backend.export(run.path, "critic", run.path / CRITIC_MODEL)))
    steps = verl_backend.read_metrics(run.path)
    metrics = reward_curve(steps, "critic/score/mean")
    run.write_manifest(cfg, algorithm, {"backend": "verl", "data": data.manifest(), "metrics": metrics, "steps": steps})
    write_report(run.path, algorithm, steps, metrics)
    say(f"done ({algorithm}, verl): {describe_metrics(metrics)}; actor exported to {exported}")
    return None


def save_initial_model(cfg: RunConfig, tokenizer, training_args, path: Path, weights: bool) -> None:
    """model.init_from_config as a directory verl can load; without weights (dry run) only config and tokenizer."""
    from transformers import AutoConfig

    path.mkdir(parents=True, exist_ok=True)
    if weights:
        load_model(cfg, tokenizer, training_args).save_pretrained(str(path))
    else:
        config = AutoConfig.from_pretrained(cfg.model.init_from_config, trust_remote_code=cfg.model.trust_remote_code)
        config.pad_token_id = tokenizer.pad_token_id
        config.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))


def reward_curve(steps: list[dict], key: str) -> dict:
    """Mean reward of the first and the last logged step."""
    values = [step[key] for step in steps if key in step]
    if not values:
        return {}
    return {"reward_first": values[0], "reward_last": values[-1], "reward_steps": len(values)}
