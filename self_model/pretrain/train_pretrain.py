"""Continued pretraining (or pretraining from scratch) on plain text, from a YAML config.

    uv run python self_model/pretrain/train_pretrain.py --config config/self_model_config/pretrain.yaml [--dry-run]
    torchrun --nproc_per_node 2 self_model/pretrain/train_pretrain.py --config ...
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments  # noqa: E402

from self_model.config import RunConfig, StageSpec, TextDataArgs  # noqa: E402
from self_model.modeling import load_model, load_tokenizer, wrap_peft  # noqa: E402
from self_model.runs import RunDir  # noqa: E402
from self_model.stage import (  # noqa: E402
    build_training_args,
    describe_metrics,
    fit,
    report_data,
    save_final,
    say,
    stage_main,
    write_preview,
)
from self_model.text_data import build_text_data  # noqa: E402

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
    training_args_class=TrainingArguments,
    data_class=TextDataArgs,
    checks=stage_checks,
    default_output_dir="checkpoints/pretrain",
)


def with_perplexity(metrics: dict) -> dict:
    """Add eval_perplexity (and its value before training) = exp(eval loss)."""
    for suffix in ("", "_before"):
        if f"eval_loss{suffix}" in metrics:
            loss = metrics[f"eval_loss{suffix}"]
            metrics[f"eval_perplexity{suffix}"] = math.exp(loss) if loss < 700 else math.inf
    return metrics


def train(cfg: RunConfig, dry_run: bool = False) -> Trainer | None:
    """Run the stage; returns the trainer (None for a dry run)."""
    data_args: TextDataArgs = cfg.data
    run = RunDir.prepare(cfg, dry_run=dry_run)
    training_args = build_training_args(cfg, TrainingArguments)
    tokenizer = load_tokenizer(cfg)
    data = build_text_data(data_args, tokenizer, training_args.seed, PREVIEW_BLOCKS if dry_run else data_args.preview_examples)
    report_data(data, tokenizer, data_args.preview_examples)
    if dry_run:
        write_preview(run, cfg, data, tokenizer)
        return None

    model = wrap_peft(load_model(cfg, tokenizer, training_args), cfg, training_args)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    metrics = with_perplexity(fit(trainer, run, cfg.eval_before_training))
    save_final(trainer, tokenizer, None, run, cfg, STAGE.name, {"data": data.manifest(), "metrics": metrics})
    say(f"done: {describe_metrics(metrics)}; saved to {run.path}")
    return trainer


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
