"""Sequence classification (single-label, multi-label, regression) on a causal LM or an encoder (transformers
AutoModelForSequenceClassification and Trainer); the label map is saved with the model (config.id2label).

    uv run python self_model/fine_tuning/train_seq_cls.py --config config/self_model_config/seq_cls.yaml [--dry-run]
    torchrun --nproc_per_node 2 self_model/fine_tuning/train_seq_cls.py --config ...
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from self_model.config import RunConfig, StageSpec, option
from self_model.data.classification import TASKS, ClassificationDataArgs, build_classification_data
from self_model.errors import ConfigError
from self_model.memory import Workload
from self_model.modeling import load_model, wrap_peft
from self_model.stage import fit, open_stage, present_data, save_final, save_merged, say, stage_main

MERGED_DIR = "merged"  # with LoRA: the full classifier (adapter merged), loadable without PEFT


@dataclass
class SeqClsArgs:
    """The classification loss."""

    class_weights: Literal["none", "balanced"] | list[float] = option(
        "Weights of the classes in the loss: none, balanced (inverse class frequency in the training rows), or one "
        "weight per label in id order. Multi-label: the weight of each label's positive examples.", "none")


def stage_checks(cfg: RunConfig) -> list[tuple[str, str]]:
    weights, data = cfg.sections["seq_cls"].class_weights, cfg.data
    if weights != "none" and data.task == "regression":
        return [("seq_cls.class_weights", "regression has no classes; remove seq_cls.class_weights")]
    if isinstance(weights, list) and data.labels is not None and len(weights) != len(data.labels):
        return [("seq_cls.class_weights", f"{len(weights)} weights for {len(data.labels)} labels in data.labels")]
    return []


STAGE = StageSpec(
    name="seq_cls",
    training_args_class="transformers.training_args:TrainingArguments",
    data_class=ClassificationDataArgs,
    sections={"seq_cls": SeqClsArgs},
    checks=stage_checks,
    # Liger's fused loss replaces a causal LM's forward; a classifier has a score head instead
    training_defaults=lambda cfg: {"liger_kernel_config": {"fused_linear_cross_entropy": False, "cross_entropy": False}},
    workload=lambda cfg, args: Workload(args.per_device_train_batch_size * cfg.data.max_length, 0, lm_head=False),
)


def class_weights(cfg: RunConfig, data) -> list[float] | None:
    """The loss weight of each class, or None for an unweighted loss."""
    setting, names = cfg.sections["seq_cls"].class_weights, data.id2label
    if setting == "none":
        return None
    if isinstance(setting, list):
        if len(setting) != len(names):
            raise ConfigError([f"seq_cls.class_weights: {len(setting)} weights for the {len(names)} labels found"],
                              cfg.source)
        return [float(w) for w in setting]
    counts = [0] * len(names)
    for label in data.train["labels"]:
        for i in ([label] if isinstance(label, int) else [i for i, v in enumerate(label) if v]):
            counts[i] += 1
    total = len(data.train)
    if cfg.data.task == "multi_label":  # BCE's pos_weight: negatives per positive
        return [(total - n) / n if n else 1.0 for n in counts]
    return [total / (len(names) * n) if n else 0.0 for n in counts]


def weighted_loss(task: str, weights: list[float]):
    """Trainer's compute_loss_func: cross-entropy (or BCE) with class weights, summed and divided by the examples
    of the whole accumulated batch so gradient accumulation and several GPUs give the same gradient."""
    import torch
    import torch.nn.functional as F

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]
        weight = torch.tensor(weights, device=logits.device, dtype=torch.float32)
        if task == "multi_label":
            total = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), pos_weight=weight, reduction="sum")
        else:
            total = F.cross_entropy(logits.float(), labels, weight=weight, reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        return total / count

    return loss


def compute_metrics(task: str):
    """accuracy and macro-F1 (multi-label: exact-match accuracy, F1 per label at probability 0.5), or MSE."""
    import numpy as np

    def metrics(prediction) -> dict[str, float]:
        logits, labels = np.asarray(prediction.predictions), np.asarray(prediction.label_ids)
        if task == "regression":
            return {"mse": float(np.mean((logits.reshape(-1) - labels.reshape(-1)) ** 2))}
        if task == "multi_label":
            predicted, truth = logits > 0, labels > 0.5
            accuracy = float(np.mean(np.all(predicted == truth, axis=1)))
        else:
            classes = np.arange(logits.shape[-1])
            predicted, truth = logits.argmax(-1)[:, None] == classes, labels[:, None] == classes
            accuracy = float(np.mean(logits.argmax(-1) == labels))
        tp = np.sum(predicted & truth, axis=0)
        f1 = 2 * tp / np.maximum(np.sum(predicted, axis=0) + np.sum(truth, axis=0), 1)
        return {"accuracy": accuracy, "macro_f1": float(np.mean(f1[np.sum(truth, axis=0) + np.sum(predicted, axis=0) > 0]))}

    return metrics


def train(cfg: RunConfig, dry_run: bool = False):
    """Run the stage; returns the trainer (None for a dry run)."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer

    run, training_args, tokenizer, _ = open_stage(cfg, STAGE, dry_run, chat=False)
    data = build_classification_data(cfg.data, tokenizer, training_args.seed)
    weights = class_weights(cfg, data)
    if present_data(run, cfg, data, tokenizer, dry_run):
        return None
    labels = data.id2label or {}
    model = load_model(cfg, tokenizer, training_args, AutoModelForSequenceClassification, problem_type=TASKS[cfg.data.task],
                       num_labels=len(labels) or 1, id2label=labels, label2id={v: k for k, v in labels.items()})
    trainer = Trainer(model=wrap_peft(model, cfg, training_args, task_type="SEQ_CLS"), args=training_args,
                      train_dataset=data.train, eval_dataset=data.eval, processing_class=tokenizer,
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=compute_metrics(cfg.data.task),
                      compute_loss_func=weighted_loss(cfg.data.task, weights) if weights else None)
    metrics = fit(trainer, run, cfg.eval_before_training)
    save_final(trainer, tokenizer, None, run, cfg, STAGE.name, data, metrics, task=cfg.data.task, class_weights=weights)
    if cfg.peft.enabled:
        save_merged(trainer, tokenizer, run.path / MERGED_DIR)
        say(f"classifier with the adapter merged: {run.path / MERGED_DIR}")
    return trainer


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
