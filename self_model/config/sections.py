"""The sections every stage shares: model, data sources, peft, and the whole run's configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from self_model.config.schema import option

TRACE_BACKENDS = ("none", "tensorboard", "wandb", "swanlab")
PEFT_METHODS = ("lora", "dora", "qlora")
ATTENTION = ("auto", "varlen", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3",
             "flash_attention_4")


@dataclass
class ModelArgs:
    """How to build the model."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = option(
        "Weight dtype; `auto` takes the checkpoint's dtype (float32 for init_from_config).", "auto"
    )
    attn_implementation: Literal[ATTENTION] = option(
        "Attention kernel. `auto`: `varlen` for packed batches on a GPU, else sdpa. `varlen` is this project's "
        "document-exact attention on torch's flash kernel (self_model/attention.py); the flash_attention_* kinds need "
        "their packages.", "auto")
    gradient_checkpointing: Literal["auto"] | bool = option(
        "Recompute activations in the backward pass to save memory. `auto`: only when the memory plan says the run "
        "would not fit otherwise (printed before training and by --dry-run).", "auto")
    trust_remote_code: bool = option("Allow custom modelling code shipped with the checkpoint.", False)
    init_from_config: str | None = option(
        "A config.json (or a directory holding one): build the model with random weights from it "
        "instead of loading model_name_or_path (training from scratch, tests).",
        None,
    )


@dataclass
class DataSourceArgs:
    """Where the rows come from; every stage's `data` section has these (each kind of data adds its own keys)."""

    train_file: str | list[str] | None = option(
        "Training data: local JSONL/JSON/Parquet/CSV files or dataset ids; `name#N` takes N rows; a list mixes sources.",
        None,
    )
    eval_file: str | list[str] | None = option("Evaluation data, same forms as train_file.", None)
    eval_split: float = option("Share of the training rows held out for evaluation when no eval_file is given.", 0.0)
    bad_rows: Literal["fail", "skip"] = option(
        "A malformed row stops the run (`fail`, naming file and line) or is counted and skipped.", "fail"
    )
    preview_examples: int = option("Examples printed (trained tokens highlighted) by --dry-run.", 2)

    def problems(self) -> list[tuple[str, str]]:
        """Rules within this section, as (key, message)."""
        return []


@dataclass
class PeftArgs:
    """Parameter-efficient fine-tuning (LoRA family)."""

    enabled: bool = option("Train adapters instead of all weights.", False)
    method: Literal["lora", "dora", "qlora"] = option("lora, dora, or qlora (4-bit base weights, needs a GPU).", "lora")
    lora_r: int = option("Adapter rank.", 8)
    lora_alpha: int = option("Adapter scaling numerator (scale = alpha / r).", 16)
    lora_dropout: float = option("Dropout on the adapter input.", 0.05)
    target_modules: list[str] | str = option("Module names to adapt, or `all-linear`.", "all-linear")
    exclude_modules: list[str] | None = option("Module names left out of target_modules (e.g. [lm_head]).", None)
    modules_to_save: list[str] | None = option("Modules trained in full and saved with the adapter.", None)


@dataclass
class RunConfig:
    """The whole resolved configuration of one stage run."""

    model_name_or_path: str | None = option("Local directory or hub id of the starting model.", None)
    tokenizer_name_or_path: str | None = option("Tokenizer; defaults to model_name_or_path.", None)
    template: str | None = option(
        "Built-in chat template name (see self_model/template/), `tokenizer` for the tokenizer's own, or `auto`: the "
        "built-in family the tokenizer and model config show (printed).", None
    )
    template_path: str | None = option("A chat template JSON file (alternative to `template`).", None)
    trace: str | list[str] = option("Tracking backend(s): none, tensorboard, wandb, swanlab.", "none")
    overwrite: bool = option("Replace a non-empty output_dir.", False)
    resume: bool | str = option("Resume from the last checkpoint in output_dir (true) or from this checkpoint path.", False)
    eval_before_training: bool = option("Evaluate once before training, to report the eval loss before and after.", False)
    numerics: Literal["stop", "skip_step"] = option(
        "On a NaN/inf gradient or loss: stop (naming the step and the last good checkpoint), or skip_step (skip that "
        "update, count it in the manifest, go on).", "stop"
    )
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataSourceArgs = field(default_factory=DataSourceArgs)  # the stage's own data class (StageSpec.data_class)
    peft: PeftArgs = field(default_factory=PeftArgs)
    training_args: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    resolved: dict[str, Any] = field(default_factory=dict)
    user_keys: frozenset[str] = frozenset()

    @property
    def output_dir(self) -> str:
        return self.training_args["output_dir"]

    def was_set(self, key_path: str) -> bool:
        """Whether the user wrote this key (`peft.lora_dropout`), in a file or on the command line."""
        return key_path in self.user_keys


INTERNAL_FIELDS = {"sections", "source", "resolved", "training_args", "user_keys"}
