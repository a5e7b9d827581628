"""Reward model: a sequence-classification head on a causal LM, trained on preference pairs (TRL RewardTrainer).

    uv run python self_model/rlhf/train_rm.py --config config/self_model_config/rm.yaml [--dry-run]
    torchrun --nproc_per_node 2 self_model/rlhf/train_rm.py --config ...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from transformers import AutoModelForSequenceClassification  # noqa: E402
from trl import RewardConfig, RewardTrainer  # noqa: E402

from self_model.config import PreferenceDataArgs, RunConfig, StageSpec  # noqa: E402
from self_model.errors import DataError  # noqa: E402
from self_model.modeling import build_peft_config, load_model, load_tokenizer  # noqa: E402
from self_model.preference_data import build_preference_data  # noqa: E402
from self_model.runs import RunDir  # noqa: E402
from self_model.stage import (  # noqa: E402
    build_training_args,
    describe_metrics,
    fit,
    report_data,
    save_final,
    save_merged,
    say,
    stage_main,
    write_preview,
)
from self_model.templates import load_renderer, use_chat_template  # noqa: E402

MERGED_DIR = "merged"  # with LoRA: the full reward model (adapter merged) that PPO loads

STAGE = StageSpec(
    name="rm",
    training_args_class=RewardConfig,
    data_class=PreferenceDataArgs,
    owned_training_args={"max_length": "data.max_length"},
    default_output_dir="checkpoints/rm",
)


def train(cfg: RunConfig, dry_run: bool = False) -> RewardTrainer | None:
    """Run the stage; returns the trainer (None for a dry run)."""
    run = RunDir.prepare(cfg, dry_run=dry_run)
    training_args = build_training_args(cfg, RewardConfig, max_length=cfg.data.max_length)
    tokenizer = load_tokenizer(cfg)
    renderer = load_renderer(cfg, tokenizer, cfg.tokenizer_name_or_path or cfg.model_name_or_path)
    use_chat_template(tokenizer, renderer)
    data = build_preference_data(cfg.data, tokenizer, training_args.seed, cfg.data.preview_examples)
    if not data.paired:
        raise DataError("a reward model trains on pairs (chosen/rejected); these rows are unpaired (completion/label)")
    report_data(data, tokenizer, cfg.data.preview_examples)
    say(f"pairs longer than data.max_length ({cfg.data.max_length}) are left out by the trainer")
    if dry_run:
        write_preview(run, cfg, data, tokenizer)
        return None

    model = load_model(cfg, tokenizer, training_args, AutoModelForSequenceClassification, num_labels=1)
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=build_peft_config(cfg, task_type="SEQ_CLS"),
    )
    metrics = fit(trainer, run, cfg.eval_before_training)
    save_final(trainer, tokenizer, renderer, run, cfg, STAGE.name, {"data": data.manifest(), "metrics": metrics})
    if cfg.peft.enabled:
        save_merged(trainer, tokenizer, run.path / MERGED_DIR)
        say(f"reward model with the adapter merged: {run.path / MERGED_DIR} (load this one for PPO)")
    say(f"done: {describe_metrics(metrics)}; saved to {run.path}")
    return trainer


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
