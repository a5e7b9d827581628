"""What train_grpo.py and train_ppo.py share: the stage description, data, and the run on either backend."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from self_model.config import RunConfig, StageSpec
from self_model.modeling import load_model, load_tokenizer
from self_model.rlhf import rewards, trl_backend, verl_backend
from self_model.rlhf.rl_config import RLArgs, RLDataArgs, rl_checks
from self_model.rlhf.rl_data import build_prompts
from self_model.runs import RunDir
from self_model.stage import build_training_args, describe_metrics, fit, report_data, save_final, say, write_preview
from self_model.templates import ChatTemplate, load_renderer, use_chat_template

INITIAL_MODEL = "initial_model"  # model.init_from_config, saved for verl (which loads models by path)
HF_MODEL = "hf_model"  # verl's final actor as a Hugging Face model


def config_class(algorithm: str) -> type:
    if algorithm == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    from trl.experimental.ppo import PPOConfig

    return PPOConfig


def stage_spec(algorithm: str) -> StageSpec:
    owned = trl_backend.GRPO_OWNED if algorithm == "grpo" else trl_backend.PPO_OWNED
    return StageSpec(
        name=algorithm,
        training_args_class=config_class(algorithm),
        sections={"rl": RLArgs},
        data_class=RLDataArgs,
        owned_training_args=owned,
        checks=lambda cfg: rl_checks(cfg, algorithm),
        default_output_dir=f"checkpoints/{algorithm}",
    )


def train(cfg: RunConfig, algorithm: str, dry_run: bool = False):
    """Run the stage on the configured backend; returns the TRL trainer (None for verl and for a dry run)."""
    rl: RLArgs = cfg.sections["rl"]
    run = RunDir.prepare(cfg, dry_run=dry_run)
    owned = trl_backend.grpo_args(rl) if algorithm == "grpo" else trl_backend.ppo_args(rl)
    training_args = build_training_args(cfg, config_class(algorithm), **(owned if rl.backend == "trl" else {}))
    tokenizer = load_tokenizer(cfg)
    renderer = load_renderer(cfg, tokenizer, cfg.tokenizer_name_or_path or cfg.model_name_or_path)
    use_chat_template(tokenizer, renderer)
    functions = [rewards.resolve(spec) for spec in rl.reward.functions]
    data = build_prompts(cfg.data, tokenizer, rl.rollout.max_prompt_length, training_args.seed, cfg.data.preview_examples)
    report_data(data, tokenizer, cfg.data.preview_examples)
    if rl.backend == "verl":
        return run_verl(cfg, algorithm, run, tokenizer, renderer, data, training_args, dry_run)
    if dry_run:
        write_preview(run, cfg, data, tokenizer)
        return None
    if not cfg.model_name_or_path:  # TRL loads the reference model from the policy's path
        save_initial_model(cfg, tokenizer, training_args, run.path / INITIAL_MODEL, weights=True)
        cfg = dataclasses.replace(cfg, model_name_or_path=str(run.path / INITIAL_MODEL),
                                  model=dataclasses.replace(cfg.model, init_from_config=None))
    model = load_model(cfg, tokenizer, training_args)
    if algorithm == "grpo":
        trainer = trl_backend.build_grpo_trainer(cfg, model, tokenizer, training_args, data.dataset("train"),
                                                 data.dataset("validation"), rewards.trl_reward_funcs(functions))
    else:
        trainer = trl_backend.build_ppo_trainer(cfg, model, tokenizer, training_args,
                                                [r["prompt"] for r in data.records["train"]])
    metrics = fit(trainer, run, cfg.eval_before_training and algorithm == "grpo")
    metrics.update(reward_curve([e for e in trainer.state.log_history if "reward" in e or "objective/scores" in e],
                                "reward" if algorithm == "grpo" else "objective/scores"))
    save_final(trainer, tokenizer, renderer, run, cfg, algorithm, {"backend": "trl", "data": data.manifest(), "metrics": metrics})
    say(f"done ({algorithm}, trl): {describe_metrics(metrics)}, {describe_reward(metrics)}; saved to {run.path}")
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
    if dry_run:
        write_preview(run, cfg, data, tokenizer)
        return None
    run.write_yaml("config.yaml", cfg.resolved)
    verl_backend.run(conf)
    exported = verl_backend.export_actor(run.path, run.path / HF_MODEL)
    tokenizer.save_pretrained(str(exported))
    steps = verl_backend.read_metrics(run.path)
    metrics = reward_curve(steps, "critic/score/mean")
    run.write_manifest(cfg, algorithm, {"backend": "verl", "data": data.manifest(), "metrics": metrics, "steps": steps})
    say(f"done ({algorithm}, verl): {describe_reward(metrics)}; actor exported to {exported}")
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


def describe_reward(metrics: dict) -> str:
    if "reward_first" not in metrics:
        return "no reward was logged (lower training_args.logging_steps)"
    return f"mean reward {metrics['reward_first']:.3f} (first logged step) -> {metrics['reward_last']:.3f} (last)"
