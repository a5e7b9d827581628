"""Knowledge distillation (GKD, on-policy distillation) of a student from a frozen teacher via TRL's GKDTrainer:
generalised JSD between their next-token distributions on the data set's completions and, for a share `lmbda` of
the steps, on completions the student samples itself. `lmbda: 0` is supervised distillation on the data set.

    uv run python self_model/distill/train_gkd.py --config config/self_model_config/gkd.yaml [--dry-run]
    torchrun --nproc_per_node 2 self_model/distill/train_gkd.py --config ...

TRL 1.12 also has a stable `DistillationTrainer`, on-policy only (no lmbda, no supervised case); GKDTrainer covers
both, so this stage builds on it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from self_model.config import (
    DataSourceArgs,
    Owned,
    RunConfig,
    StageSpec,
    from_key,
    locate,
    option,
    path_exists_or_hub_id,
)
from self_model.data.conversations import CONVERSATION_KEYS
from self_model.data.sft import build_sft_data
from self_model.errors import UserError
from self_model.memory import BYTES, Workload
from self_model.modeling import build_peft_config, load_model, load_tokenizer, set_stop_tokens
from self_model.stage import fit, open_stage, present_data, save_final, stage_main
from self_model.template import IGNORE_INDEX

# SFTConfig fields GKD never reads: its collator takes our template's prompt/completion ids and it computes its own loss
SFT_ONLY_FIELDS = ("dataset_text_field", "dataset_kwargs", "dataset_num_proc", "chat_template_path", "eos_token",
                   "pad_token", "truncation_mode", "packing", "packing_strategy", "padding_free", "eval_packing",
                   "pad_to_multiple_of", "completion_only_loss", "assistant_only_loss", "loss_type", "model_init_kwargs",
                   "router_aux_loss_coef")


@dataclass
class GKDArgs:
    """The teacher and the distillation loss."""

    teacher: str | None = option(
        "The teacher: a local directory (an SFT stage's output_dir, a LoRA one too) or hub id, with the student's "
        "vocabulary. "
        "Never trained; loaded in the training precision (bf16/fp16, else float32).", None)
    lmbda: float = option("Share of the steps trained on completions the student samples (on-policy); 0: supervised "
                          "distillation on the data set's completions only.", 0.5)
    beta: float = option("Generalised JSD interpolation: 0 = KL(teacher || student), 1 = KL(student || teacher), "
                         "0.5 = Jensen-Shannon.", 0.5)
    temperature: float = option("Sampling temperature of the on-policy completions (TRL's GKD compares the "
                                "distributions at temperature 1).", 0.9)
    max_new_tokens: int = option("Longest on-policy completion, in tokens.", 128)


@dataclass
class DistillDataArgs(DataSourceArgs):
    """Conversations: the last assistant turn is the completion the student learns from the teacher, the turns
    before it are the prompt (also the prompt of on-policy sampling)."""

    format: Literal["auto", "messages", "sharegpt", "alpaca", "input_output"] = option(
        "Row format; `auto` detects it from each row's keys.", "auto")
    keys: dict[str, str] = option(f"Rename the fields read from rows. Valid names: {', '.join(CONVERSATION_KEYS)}.", {})
    max_length: int = option("Prompt plus completion longer than this many tokens is truncated (the share is "
                             "reported); a row whose prompt alone fills it is dropped.", 1024)
    train_on: ClassVar[str] = "last_assistant"  # what build_sft_data labels: the completion

    def problems(self) -> list[tuple[str, str]]:
        found = [(f"data.keys.{key}", f"unknown field name (valid: {', '.join(CONVERSATION_KEYS)})")
                 for key in sorted(set(self.keys) - set(CONVERSATION_KEYS))]
        if self.max_length < 8:
            found.append(("data.max_length", f"must be at least 8, got {self.max_length}"))
        return found


def stage_checks(cfg: RunConfig) -> list[tuple[str, str]]:
    args: GKDArgs = cfg.sections["gkd"]
    problems = [(f"training_args.{key}", "GKD batches are the template's prompt + completion ids and GKD computes its "
                 "own loss, so this SFT setting has no effect; remove it") for key in SFT_ONLY_FIELDS
                if key in cfg.training_args]
    args.teacher = locate(args.teacher)
    if not args.teacher:
        problems.append(("gkd.teacher", "missing: name the teacher model (a directory or hub id)"))
    elif not path_exists_or_hub_id(args.teacher):
        problems.append(("gkd.teacher", f"{args.teacher!r} is neither an existing path nor a hub id"))
    elif args.teacher == cfg.model_name_or_path and not cfg.model.init_from_config:
        problems.append(("gkd.teacher", "is the student's own starting model: their distributions are equal, so the "
                         "divergence and its gradient are zero. Distil from another (larger or fine-tuned) model"))
    for key in ("lmbda", "beta"):
        if not 0.0 <= getattr(args, key) <= 1.0:
            problems.append((f"gkd.{key}", f"must be in [0, 1], got {getattr(args, key)}"))
    if args.temperature <= 0 or args.max_new_tokens < 1:
        problems.append(("gkd.temperature", f"temperature ({args.temperature}) must be positive and max_new_tokens "
                         f"({args.max_new_tokens}) at least 1"))
    return problems


def teacher_config(cfg: RunConfig, training_args) -> RunConfig:
    """The config that loads the teacher: its own path and tokenizer, no adapters, the training precision."""
    precision = "bfloat16" if training_args.bf16 else "float16" if training_args.fp16 else "float32"
    return dataclasses.replace(cfg, model_name_or_path=cfg.sections["gkd"].teacher, tokenizer_name_or_path=None,
                               peft=dataclasses.replace(cfg.peft, enabled=False),
                               model=dataclasses.replace(cfg.model, init_from_config=None, dtype=precision))


def workload(cfg: RunConfig, args) -> Workload:
    from self_model import memory

    tokens = args.per_device_train_batch_size * cfg.data.max_length
    teacher = teacher_config(cfg, args)
    try:
        params = memory.model_shape(dataclasses.replace(teacher, model_name_or_path=base_of(teacher.model_name_or_path))).params
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise does_not_load(teacher.model_name_or_path, err) from None
    return Workload(tokens, tokens, teacher_bytes=params * BYTES[teacher.model.dtype])


def base_of(teacher: str) -> str:
    """Where the teacher's architecture is described: the base model of a LoRA output (an adapter directory, which
    transformers loads with its base), else the teacher itself."""
    adapter = Path(teacher) / "adapter_config.json"
    return json.loads(adapter.read_text())["base_model_name_or_path"] if adapter.is_file() else teacher


def does_not_load(teacher: str, err: Exception) -> UserError:
    return UserError(f"gkd.teacher {teacher!r} does not load: {str(err).strip().splitlines()[0][:300]}")


STAGE = StageSpec(
    name="gkd",
    training_args_class="trl.experimental.gkd.gkd_config:GKDConfig",
    data_class=DistillDataArgs,
    sections={"gkd": GKDArgs},
    checks=stage_checks,
    workload=workload,
    owned_training_args={
        "lmbda": from_key("gkd.lmbda"), "beta": from_key("gkd.beta"), "temperature": from_key("gkd.temperature"),
        "max_new_tokens": from_key("gkd.max_new_tokens"), "max_length": from_key("data.max_length"),
        "teacher_model_name_or_path": Owned("gkd.teacher"), "teacher_model_init_kwargs": Owned("gkd.teacher"),
        "trust_remote_code": from_key("model.trust_remote_code"),
    },
)


def student_vocab_size(cfg: RunConfig) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(cfg.model.init_from_config or cfg.model_name_or_path,
                                        trust_remote_code=cfg.model.trust_remote_code)
    return config.get_text_config().vocab_size


def check_vocabularies(cfg: RunConfig, teacher_cfg: RunConfig, tokenizer) -> int | None:
    """Refuse a teacher whose tokens differ from the student's, before any weight is loaded. Returns the rows to cut
    the teacher's head to when only its padding rows differ (Qwen2.5: 152064 for 7B, 151936 for 0.5B), else None."""
    from transformers import AutoConfig

    teacher = teacher_cfg.model_name_or_path
    try:
        config = AutoConfig.from_pretrained(base_of(teacher), trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise does_not_load(teacher, err) from None
    teacher_tokens = load_tokenizer(teacher_cfg).get_vocab()
    student_tokens = tokenizer.get_vocab()
    if teacher_tokens != student_tokens:
        differ = sorted(set(teacher_tokens.items()) ^ set(student_tokens.items()))
        example = ", ".join(repr(token) for token, _ in differ[:3])
        raise UserError(f"gkd.teacher {teacher!r} has another vocabulary than the student ({len(teacher_tokens)} vs "
                        f"{len(student_tokens)} tokens; {len(differ)} token ids differ, e.g. {example}). GKD compares "
                        "next-token distributions id by id: use a teacher of the student's model family")
    teacher_rows, student_rows = config.get_text_config().vocab_size, student_vocab_size(cfg)
    if teacher_rows == student_rows:
        return None
    if teacher_rows > student_rows >= len(tokenizer):
        return student_rows  # the rows past the tokenizer are padding: the teacher's head keeps the student's rows
    raise UserError(f"the student's output head has {student_rows} rows and the teacher's {teacher_rows} (tokenizer: "
                    f"{len(tokenizer)} tokens): only a teacher with extra padding rows can be mapped onto the student")


def load_teacher(teacher_cfg: RunConfig, tokenizer, training_args, rows: int | None):
    """The frozen teacher, its head cut to `rows` when given."""
    teacher = load_model(teacher_cfg, tokenizer, training_args)
    if rows is not None:
        teacher.resize_token_embeddings(rows)
    return teacher.requires_grad_(False).eval()


def with_completion_mask(data, tokenizer):
    """GKD's collator reads the prompt/completion boundary from `completion_mask` (and wants the prompt's text)."""
    def add(example):
        mask = [int(label != IGNORE_INDEX) for label in example["labels"]]
        return {"completion_mask": mask, "prompt": tokenizer.decode(example["input_ids"][: mask.index(1)])}

    data.train = data.train.map(add)
    if data.eval is not None:
        data.eval = data.eval.map(add)
    return data


def train(cfg: RunConfig, dry_run: bool = False):
    """Run the stage; returns the trainer (None for a dry run)."""
    from self_model.distill.gkd_trainer import RecountingGKDTrainer

    run, training_args, tokenizer, renderer = open_stage(cfg, STAGE, dry_run)
    teacher_cfg = teacher_config(cfg, training_args)
    rows = check_vocabularies(cfg, teacher_cfg, tokenizer)
    data = build_sft_data(cfg.data, tokenizer, renderer, training_args.seed)
    if present_data(run, cfg, data, tokenizer, dry_run):
        return None
    data = with_completion_mask(data, tokenizer)
    model = load_model(cfg, tokenizer, training_args)
    set_stop_tokens(model, tokenizer, renderer.stop_words(tokenizer))  # on-policy samples end at the end of the turn
    trainer = RecountingGKDTrainer(model=model, teacher_model=load_teacher(teacher_cfg, tokenizer, training_args, rows),
                                   args=training_args, train_dataset=data.train, eval_dataset=data.eval,
                                   processing_class=tokenizer, peft_config=build_peft_config(cfg))
    metrics = fit(trainer, run, cfg.eval_before_training)
    save_final(trainer, tokenizer, renderer, run, cfg, STAGE.name, data, metrics, teacher=teacher_cfg.model_name_or_path,
               teacher_rows=rows)
    return trainer


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
