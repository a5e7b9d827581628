"""Continued pretraining (or pretraining from scratch) on plain text, from a YAML config.

    uv run python self_model/pretrain/train_pretrain.py --config config/self_model_config/pretrain.yaml [--dry-run]
    torchrun --nproc_per_node 2 self_model/pretrain/train_pretrain.py --config ...
"""

from __future__ import annotations

import math
import sys

from self_model.config import Owned, RunConfig, StageSpec
from self_model.data.text import TextDataArgs, build_text_data
from self_model.memory import Workload
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


def workload(cfg: RunConfig, args) -> Workload:
    tokens = args.per_device_train_batch_size * cfg.data.block_size
    return Workload(tokens, tokens)


STAGE = StageSpec(
    name="pretrain",
    training_args_class="transformers.training_args:TrainingArguments",
    data_class=TextDataArgs,
    checks=stage_checks,
    workload=workload,
    # the collator needs each block's `seq_lengths`, a column the model's forward does not take
    owned_training_args={"remove_unused_columns": Owned("data.isolate_documents",
                                                        lambda cfg: False if cfg.data.isolate_documents else None)},
)


def collator(cfg: RunConfig, tokenizer):
    """Padding-free batches whose position_ids restart at each document, or (documents not isolated) padded blocks."""
    if cfg.data.isolate_documents:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(tokenizer, mlm=False)


def with_perplexity(metrics: dict) -> dict:
    """Add eval_perplexity (and its value before training) = exp(eval loss)."""
    for suffix in ("", "_before"):
        if f"eval_loss{suffix}" in metrics:
            loss = metrics[f"eval_loss{suffix}"]
            metrics[f"eval_perplexity{suffix}"] = math.exp(loss) if loss < 700 else math.inf
    return metrics


def train(cfg: RunConfig, dry_run: bool = False):
    """Run the stage; returns the trainer (None for a dry run)."""
    from transformers import Trainer

    run, training_args, tokenizer, _ = open_stage(cfg, STAGE, dry_run, chat=False)
    data = build_text_data(cfg.data, tokenizer, training_args.seed, PREVIEW_BLOCKS if dry_run else cfg.data.preview_examples)
    if present_data(run, cfg, data, tokenizer, dry_run):
        return None
    model = wrap_peft(load_model(cfg, tokenizer, training_args, packed=cfg.data.isolate_documents), cfg, training_args)
    trainer = Trainer(model=model, args=training_args, train_dataset=data.train, eval_dataset=data.eval,
                      processing_class=tokenizer, data_collator=collator(cfg, tokenizer))
    metrics = with_perplexity(fit(trainer, run, cfg.eval_before_training))
    save_final(trainer, tokenizer, None, run, cfg, STAGE.name, data, metrics)
    return trainer


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
