"""Continued pretraining (or pretraining from scratch) on plain text, from a YAML config.

    uv run python self_model/pretrain/train_pretrain.py --config config/self_model_config/pretrain.yaml [--dry-run]
    torchrun --nproc_per_node 2 self_model/pretrain/train_pretrain.py --config ...
"""

from __future__ import annotations

import math
import sys

from self_model.config import RunConfig, StageSpec
from self_model.data.text import TextDataArgs, build_text_data
from self_model.modeling import load_model, wrap_peft
from self_model.stage import fit, open_stage, present_data, save_final, stage_main

PREVIEW_BLOCKS = 100  # blocks written to preview.jsonl by --dry-run


def stage_checks(cfg: RunConfig) -> list[tuple[str, str]]:
    problems = []
    if cfg.data.streaming and cfg.training_args.get("max_steps", -1) <= 0:
        problems.append(("training_args.max_steps", "data.streaming gives a dataset of unknown length: set max_steps "
                         "(the number of optimizer steps) instead of num_train_epochs"))
    if cfg.template or cfg.template_path:
        problems.append(("template", "pretraining trains on plain text and uses no chat template; remove it"))
    return problems


STAGE = StageSpec(
    name="pretrain",
    training_args_class="transformers.training_args:TrainingArguments",
    data_class=TextDataArgs,
    checks=stage_checks,
)


def with_perplexity(metrics: dict) -> dict:
    """Add eval_perplexity (and its value before training) = exp(eval loss)."""
    for suffix in ("", "_before"):
        if f"eval_loss{suffix}" in metrics:
            loss = metrics[f"eval_loss{suffix}"]
            metrics[f"eval_perplexity{suffix}"] = math.exp(loss) if loss < 700 else math.inf
    return metrics


def train(cfg: RunConfig, dry_run: bool = False):
    """Run the stage; returns the trainer (None for a dry run)."""
    from transformers import DataCollatorForLanguageModeling, Trainer

    run, training_args, tokenizer, _ = open_stage(cfg, STAGE, dry_run, chat=False)
    data = build_text_data(cfg.data, tokenizer, training_args.seed, PREVIEW_BLOCKS if dry_run else cfg.data.preview_examples)
    if present_data(run, cfg, data, tokenizer, dry_run):
        return None
    model = wrap_peft(load_model(cfg, tokenizer, training_args), cfg, training_args)
    trainer = Trainer(model=model, args=training_args, train_dataset=data.train, eval_dataset=data.eval,
                      processing_class=tokenizer, data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    metrics = with_perplexity(fit(trainer, run, cfg.eval_before_training))
    save_final(trainer, tokenizer, None, run, cfg, STAGE.name, data, metrics)
    return trainer


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
