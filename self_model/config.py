"""One config loader for every stage: YAML files, `base:` inheritance, CLI overrides, a typed schema.

A stage script calls `load_config(StageSpec(...), argv)`; it returns a `RunConfig` whose sections are
checked dataclasses and whose `training_args` dict holds only fields of the stage's TRL/transformers
config class. Every problem is reported at once, naming the file (or the command line), the key path
and the closest valid key, before torch or any model is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from self_model.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = Path(__file__).resolve().parent / "template"
TRACE_BACKENDS = ("none", "tensorboard", "wandb", "swanlab")
SECRET_KEY_PATTERN = re.compile(r"(api_?key|token|secret|password)", re.IGNORECASE)
COMMAND_LINE = "command line"


def _help(text: str, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    """A dataclass field with help text (mutable defaults go through default_factory)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


@dataclass
class ModelArgs:
    """How to build the model."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = _help(
        "Weight dtype; `auto` takes the checkpoint's dtype (float32 for init_from_config).", "auto"
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention"] | None = (
        _help("Attention kernel; null lets transformers choose (sdpa where available).", None)
    )
    trust_remote_code: bool = _help("Allow custom modelling code shipped with the checkpoint.", False)
    init_from_config: str | None = _help(
        "A config.json (or a directory holding one): build the model with random weights from it "
        "instead of loading model_name_or_path (training from scratch, tests).",
        None,
    )


@dataclass
class DataSourceArgs:
    """Where the rows come from; every stage's `data` section has these."""

    train_file: str | list[str] | None = _help(
        "Training data: local JSONL/JSON/Parquet/CSV files or dataset ids; `name#N` takes N rows; a list mixes sources.",
        None,
    )
    eval_file: str | list[str] | None = _help("Evaluation data, same forms as train_file.", None)
    eval_split: float = _help("Share of the training rows held out for evaluation when no eval_file is given.", 0.0)
    bad_rows: Literal["fail", "skip"] = _help(
        "A malformed row stops the run (`fail`, naming file and line) or is counted and skipped.", "fail"
    )
    preview_examples: int = _help("Examples printed (trained tokens highlighted) by --dry-run.", 2)

    def problems(self) -> list[tuple[str, str]]:
        """Rules within this section, as (key, message)."""
        return []


SFT_ROW_KEYS = ("messages", "conversations", "system", "instruction", "input", "output", "history")


@dataclass
class DataArgs(DataSourceArgs):
    """Conversation data for SFT: row formats, length, which tokens are trained."""

    format: Literal["auto", "messages", "sharegpt", "alpaca", "input_output"] = _help(
        "Row format; `auto` detects it from each row's keys.", "auto"
    )
    keys: dict[str, str] = _help(
        "Rename the fields read from rows, e.g. {messages: dialog, output: answer}. Valid names: "
        "messages, conversations, system, instruction, input, output, history.",
        {},
    )
    max_length: int = _help("Examples longer than this many tokens are truncated (the share is reported).", 1024)
    packing: bool = _help("Pack several examples into each max_length sequence (TRL packing).", False)
    train_on: Literal["all_assistant", "last_assistant", "everything"] = _help(
        "Which tokens carry loss: every assistant turn, the last one, or the whole text.", "all_assistant"
    )

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.max_length < 8:
            found.append(("data.max_length", f"must be at least 8, got {self.max_length}"))
        for key in sorted(set(self.keys) - set(SFT_ROW_KEYS)):
            found.append((f"data.keys.{key}", f"unknown field name (valid: {', '.join(SFT_ROW_KEYS)})"))
        return found


@dataclass
class TextDataArgs(DataSourceArgs):
    """Plain text for continued pretraining: documents joined with EOS and cut into blocks."""

    train_file: str | list[str] | None = _help(
        "Training text: .jsonl/.json/.parquet/.csv rows, .txt files or dataset ids; `name#N` takes N documents; "
        "a list mixes sources.",
        None,
    )
    text_fields: list[str] = _help(
        "Fields holding a row's text; the first present one wins. Rows with none of them that hold a "
        "conversation (messages, conversations, alpaca fields) are flattened to text.",
        ["text"],
    )
    txt_documents: Literal["line", "blank_line"] = _help(
        "How a .txt file splits into documents: one per line, or blocks separated by blank lines.", "line"
    )
    block_size: int = _help("Tokens per training sequence; the last partial block is padded and its padding masked.", 1024)
    streaming: bool = _help(
        "Read the training files lazily (corpora larger than memory); needs training_args.max_steps.", False
    )

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.block_size < 8:
            found.append(("data.block_size", f"must be at least 8, got {self.block_size}"))
        if not self.text_fields:
            found.append(("data.text_fields", "name at least one field"))
        if self.streaming and self.eval_split:
            found.append(("data.eval_split", "a streamed corpus cannot be split: give an eval_file instead"))
        if self.streaming:
            for spec in [self.train_file] if isinstance(self.train_file, str) else self.train_file or []:
                if re.search(r"#\d+$", spec):
                    found.append(("data.train_file", f"{spec}: `#N` sampling reads the whole source; not available "
                                  "with data.streaming (take a slice of the file instead)"))
        return found


@dataclass
class PreferenceDataArgs(DataSourceArgs):
    """Preference data for reward models and the DPO family: pairs, or unpaired rows with a label (KTO)."""

    prompt_key: str = _help("Field with the prompt: a string or a list of messages (user turn last).", "prompt")
    chosen_key: str = _help(
        "Field with the preferred answer: a string, one assistant message, or a whole conversation.", "chosen"
    )
    rejected_key: str = _help("Field with the dispreferred answer, same forms as chosen_key.", "rejected")
    completion_key: str = _help("Unpaired rows (KTO): field with the answer.", "completion")
    label_key: str = _help("Unpaired rows (KTO): field saying whether the answer is desirable (true/false).", "label")
    margin_key: str | None = _help("Reward model: field with a per-pair margin added to the pairwise loss.", None)
    max_length: int = _help("Prompt plus answer longer than this many tokens is truncated (the share is reported).", 1024)

    def problems(self) -> list[tuple[str, str]]:
        if self.max_length < 8:
            return [("data.max_length", f"must be at least 8, got {self.max_length}")]
        return []


PEFT_METHODS = ("lora", "dora", "qlora")


@dataclass
class PeftArgs:
    """Parameter-efficient fine-tuning (LoRA family)."""

    enabled: bool = _help("Train adapters instead of all weights.", False)
    method: Literal["lora", "dora", "qlora"] = _help("lora, dora, or qlora (4-bit base weights, needs a GPU).", "lora")
    lora_r: int = _help("Adapter rank.", 8)
    lora_alpha: int = _help("Adapter scaling numerator (scale = alpha / r).", 16)
    lora_dropout: float = _help("Dropout on the adapter input.", 0.05)
    target_modules: list[str] | str = _help("Module names to adapt, or `all-linear`.", "all-linear")
    modules_to_save: list[str] | None = _help("Modules trained in full and saved with the adapter.", None)


@dataclass
class RunConfig:
    """The whole resolved configuration of one stage run."""

    model_name_or_path: str | None = _help("Local directory or hub id of the starting model.", None)
    tokenizer_name_or_path: str | None = _help("Tokenizer; defaults to model_name_or_path.", None)
    template: str | None = _help(
        "Built-in chat template name (see self_model/template/) or `tokenizer` for the tokenizer's own.", None
    )
    template_path: str | None = _help("A chat template JSON file (alternative to `template`).", None)
    trace: str | list[str] = _help("Tracking backend(s): none, tensorboard, wandb, swanlab.", "none")
    overwrite: bool = _help("Replace a non-empty output_dir.", False)
    resume: bool | str = _help("Resume from the last checkpoint in output_dir (true) or from this checkpoint path.", False)
    eval_before_training: bool = _help("Evaluate once before training, to report the eval loss before and after.", False)
    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataSourceArgs = field(default_factory=DataArgs)  # the stage's data class (StageSpec.data_class)
    peft: PeftArgs = field(default_factory=PeftArgs)
    training_args: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def output_dir(self) -> str:
        return self.training_args["output_dir"]


@dataclass
class StageSpec:
    """What a stage adds to the shared schema."""

    name: str
    # the TRL/transformers config class, or a function of the stage's sections that picks one (DPO's algorithm)
    training_args_class: type | typing.Callable[[dict[str, Any]], type]
    sections: dict[str, type] = field(default_factory=dict)
    # training_args fields our own sections set; the value names the key to use instead.
    owned_training_args: dict[str, str] = field(default_factory=dict)
    default_output_dir: str = "checkpoints/run"
    data_class: type = DataArgs
    # the stage's own cross-field rules: (config) -> [(key, message)]
    checks: typing.Callable[[RunConfig], list[tuple[str, str]]] | None = None

    def args_class(self, sections: dict[str, Any]) -> type:
        """The class `training_args` are checked against, given the stage's built sections."""
        if isinstance(self.training_args_class, type):
            return self.training_args_class
        return self.training_args_class(sections)


SHARED_OWNED_TRAINING_ARGS = {"report_to": "trace", "resume_from_checkpoint": "resume"}
INTERNAL_FIELDS = {"sections", "source", "resolved", "training_args"}


def builtin_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.json"))


# ---------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _closest(key: str, valid: typing.Iterable[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


class _Mismatch(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    """Return `value` checked against (and lightly coerced to) the annotation `tp`, or raise _Mismatch."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch(f"expected {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise _Mismatch(f"must be one of {', '.join(repr(c) for c in choices)}{_closest(str(value), map(str, choices))}")
    if origin in (list, tuple, typing.Sequence, typing.Iterable) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch(f"expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp) for v in value]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch(f"expected a mapping, got {type(value).__name__}")
        key_tp, val_tp = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, key_tp): _coerce(v, val_tp) for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch("expected null")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        valid = [m.value for m in tp]
        if value in valid or isinstance(value, tp):
            return value
        raise _Mismatch(f"must be one of {', '.join(map(str, valid))}{_closest(str(value), map(str, valid))}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads `1e-4` (no dot) as a string
            except ValueError:
                pass
        raise _Mismatch(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch(f"expected a string, got {value!r}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch(f"expected {tp.__name__}, got {type(value).__name__}")
    return value


def _check_fields(
    values: dict, cls: type, path: str, origin_of: typing.Callable[[str], str], problems: list[str]
) -> dict:
    """Check a mapping against a dataclass's fields; unknown keys and bad types become problems."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]
    checked = {}
    for key, value in values.items():
        key_path = f"{path}{key}"
        if key not in names:
            problems.append(f"{key_path}{origin_of(key_path)}: unknown key{_closest(key, names)}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                problems.append(f"{key_path}{origin_of(key_path)}: expected a section (a mapping)")
                continue
            checked[key] = _check_fields(value, tp, f"{key_path}.", origin_of, problems)
            continue
        try:
            checked[key] = _coerce(value, tp)
        except _Mismatch as err:
            problems.append(f"{key_path}{origin_of(key_path)}: {err}")
    return checked


def _build(cls: type, values: dict) -> Any:
    """Instantiate a (possibly nested) dataclass from checked values."""
    hints = typing.get_type_hints(cls)
    kwargs = {k: _build(hints[k], v) if dataclasses.is_dataclass(hints[k]) else v for k, v in values.items()}
    return cls(**kwargs)


def check_dataclass(values: dict, cls: type, origin_of: typing.Callable[[str], str], problems: list[str]) -> Any:
    """A dataclass built from `values` after checking every key and type; problems are appended, not raised."""
    return _build(cls, _check_fields(values, cls, "", origin_of, problems))


# ---------------------------------------------------------------- files and merging


def _flat_keys(node: Any, prefix: str = "") -> typing.Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{prefix}{key}"
            yield from _flat_keys(value, f"{prefix}{key}.")


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
    """The file and, first, every file it builds on through `base:` (relative to the file)."""
    if not path.is_file():
        where = f" (base of {chain[-1]})" if chain else ""
        raise ConfigError([f"config file not found: {path}{where}"], str(path))
    if path.resolve() in [p.resolve() for p in chain]:
        raise ConfigError([f"`base:` cycle: {' -> '.join(map(str, (*chain, path)))}"], str(path))
    try:
        conf = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and OmegaConf's own errors
        raise ConfigError([f"not valid YAML: {err}"], str(path)) from None
    if conf is None:
        conf = OmegaConf.create({})
    if not isinstance(conf, DictConfig):
        raise ConfigError(["the top level must be a mapping of keys to values"], str(path))
    layers: list[tuple[str, DictConfig]] = []
    base = conf.pop("base", None)
    bases = [] if base is None else ([base] if isinstance(base, str) else list(base))
    for b in bases:
        layers += _read_yaml((path.parent / str(b)), (*chain, path))
    layers.append((str(path), conf))
    return layers


def _parse_overrides(overrides: list[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0]]
    if bad:
        raise ConfigError([f"override {o!r} must look like section.key=value" for o in bad], COMMAND_LINE)
    try:
        return OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as err:
        raise ConfigError([f"cannot parse overrides: {err}"], COMMAND_LINE) from None


def _resolve(merged: DictConfig, source: str) -> dict:
    try:
        return OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "?"
        msg = str(err).splitlines()[0]
        if "oc.env" in msg or "Environment variable" in msg:
            msg += " (set the environment variable, or remove the key)"
        raise ConfigError([f"{key}: {msg}"], source) from None


def redact(node: Any, unresolved: Any = None) -> Any:
    """The config with secrets removed: secret-named keys and values read from the environment."""
    if isinstance(node, dict):
        raw = unresolved if isinstance(unresolved, dict) else {}
        out = {}
        for key, value in node.items():
            raw_value = raw.get(key)
            if SECRET_KEY_PATTERN.search(str(key)) and value not in (None, "", False):
                out[key] = "<redacted>"
            elif isinstance(raw_value, str) and "oc.env" in raw_value:
                out[key] = raw_value
            else:
                out[key] = redact(value, raw_value)
        return out
    if isinstance(node, list):
        raw = unresolved if isinstance(unresolved, list) and len(unresolved) == len(node) else [None] * len(node)
        return [redact(v, r) for v, r in zip(node, raw)]
    return node


# ---------------------------------------------------------------- cross-field rules


def _path_exists_or_hub_id(value: str) -> bool:
    """Whether `value` is an existing local path or could be a hub id (`org/name`, `name`)."""
    if Path(value).exists():
        return True
    looks_local = value.startswith((".", "/", "~")) or value.endswith((".json", ".jsonl", ".parquet", ".csv", ".txt"))
    return not looks_local and value.count("/") <= 1


def _data_source_path(spec: str) -> str:
    return re.sub(r"#\d+$", "", spec)


def locate(value: str | None) -> str | None:
    """A relative path is looked up in the current directory, then in the repository root."""
    if not value or Path(value).is_absolute() or Path(value).exists():
        return value
    name, sep, count = value.partition("#")
    candidate = REPO_ROOT / name
    return f"{candidate}{sep}{count}" if candidate.exists() else value


def _locate_paths(cfg: RunConfig) -> None:
    for key in ("model_name_or_path", "tokenizer_name_or_path", "template_path"):
        setattr(cfg, key, locate(getattr(cfg, key)))
    cfg.model.init_from_config = locate(cfg.model.init_from_config)
    for key in ("train_file", "eval_file"):
        value = getattr(cfg.data, key)
        setattr(cfg.data, key, [locate(v) for v in value] if isinstance(value, list) else locate(value))


def validate(
    cfg: RunConfig, stage: StageSpec, origin_of: typing.Callable[[str], str], check_files: bool = True
) -> list[str]:
    """Cross-field rules; each message quotes the keys and values involved."""
    problems = []
    _locate_paths(cfg)

    def bad(key: str, msg: str) -> None:
        problems.append(f"{key}{origin_of(key)}: {msg}")

    if not cfg.model_name_or_path and not cfg.model.init_from_config:
        bad("model_name_or_path", "missing: set model_name_or_path, or model.init_from_config to train from scratch")
    if check_files and cfg.model.init_from_config and not Path(cfg.model.init_from_config).exists():
        bad("model.init_from_config", f"file not found: {cfg.model.init_from_config}")
    for key in ("model_name_or_path", "tokenizer_name_or_path"):
        value = getattr(cfg, key)
        if check_files and value and not _path_exists_or_hub_id(value):
            bad(key, f"{value!r} is neither an existing path nor a hub id")
    if not cfg.tokenizer_name_or_path and not cfg.model_name_or_path:
        bad("tokenizer_name_or_path", "missing: a tokenizer is needed when training from model.init_from_config")

    if cfg.template and cfg.template_path:
        bad("template_path", "set either template or template_path, not both")
    if cfg.template and cfg.template != "tokenizer" and cfg.template not in builtin_templates():
        names = [*builtin_templates(), "tokenizer"]
        bad("template", f"unknown template {cfg.template!r}{_closest(cfg.template, names)} (valid: {', '.join(names)})")
    if check_files and cfg.template_path and not Path(cfg.template_path).is_file():
        bad("template_path", f"file not found: {cfg.template_path}")

    traces = [cfg.trace] if isinstance(cfg.trace, str) else cfg.trace
    for name in traces:
        if name not in TRACE_BACKENDS:
            bad("trace", f"unknown backend {name!r}{_closest(name, TRACE_BACKENDS)} (valid: {', '.join(TRACE_BACKENDS)})")
    if "none" in traces and len(traces) > 1:
        bad("trace", "`none` cannot be combined with other backends")

    data = cfg.data
    if not data.train_file:
        bad("data.train_file", "missing: name at least one training file or dataset id")
    for key in ("train_file", "eval_file"):
        specs = getattr(data, key) or []
        for spec in [specs] if isinstance(specs, str) else specs:
            if check_files and not _path_exists_or_hub_id(_data_source_path(spec)):
                bad(f"data.{key}", f"file not found: {_data_source_path(spec)}")
    if not 0.0 <= data.eval_split < 1.0:
        bad("data.eval_split", f"must be in [0, 1), got {data.eval_split}")
    if data.eval_file and data.eval_split:
        bad("data.eval_split", f"set eval_file or eval_split ({data.eval_split}), not both")
    for key, message in data.problems() + (stage.checks(cfg) if stage.checks else []):
        bad(key, message)

    peft = cfg.peft
    if peft.lora_r <= 0:
        bad("peft.lora_r", f"must be positive, got {peft.lora_r}")
    if not 0.0 <= peft.lora_dropout < 1.0:
        bad("peft.lora_dropout", f"must be in [0, 1), got {peft.lora_dropout}")
    if isinstance(peft.target_modules, str) and peft.target_modules != "all-linear":
        bad("peft.target_modules", f"a list of module names or `all-linear`, got {peft.target_modules!r}")
    if peft.method == "qlora" and not peft.enabled:
        bad("peft.method", "qlora trains adapters: set peft.enabled: true")
    if peft.enabled and peft.method == "qlora" and cfg.model.init_from_config:
        bad("peft.method", "qlora quantizes the weights loaded from model_name_or_path, and model.init_from_config "
            "builds random ones instead: use lora, or save the model and load it through model_name_or_path")

    owned = {**SHARED_OWNED_TRAINING_ARGS, **stage.owned_training_args}
    for key, ours in owned.items():
        if key in cfg.training_args and key != "resume_from_checkpoint":
            bad(f"training_args.{key}", f"set by this project: use `{ours}` instead")
    if "resume_from_checkpoint" in cfg.training_args:
        bad("training_args.resume_from_checkpoint", "use the top-level `resume: true` (or a checkpoint path) instead")
    if cfg.resume and cfg.overwrite:
        bad("resume", "resume and overwrite exclude each other")
    return problems


# ---------------------------------------------------------------- entry point


def build_arg_parser(stage: StageSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f"Run the {stage.name} stage from a YAML config.",
        epilog="Overrides: section.key=value after the flags, e.g. training_args.learning_rate=1e-4 peft.lora_r=16",
    )
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--dry-run", action="store_true", help="validate, build and preview the data; load no weights")
    parser.add_argument("--trace", action="append", help="tracking backend (repeatable); overrides `trace`")
    parser.add_argument("--resume", action="store_true", help="resume from output_dir's last checkpoint (resume=PATH for another)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    return parser


def load_config(stage: StageSpec, argv: list[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    """Parse the command line and the YAML chain into a checked RunConfig."""
    args = build_arg_parser(stage).parse_args(argv)
    overrides = list(args.overrides)
    if args.trace:
        overrides.append(f"trace=[{','.join(args.trace)}]")
    if args.resume:
        overrides.append("resume=true")
    if args.overwrite:
        overrides.append("overwrite=true")
    return load_config_file(stage, args.config, overrides), args


def merge_layers(
    path: str | os.PathLike | None, overrides: list[str] = (), flags: dict | None = None
) -> tuple[dict, dict, typing.Callable[[str], str]]:
    """The YAML chain (none when `path` is None), then `flags` and `key=value` overrides from the command line.

    Returns the resolved values, the unresolved ones (`${oc.env:...}` kept, for saving) and `origin_of(key_path)`,
    which names where a key was set when that is not the file itself.
    """
    source = str(path) if path is not None else COMMAND_LINE
    layers = _read_yaml(Path(path)) if path is not None else []
    if flags:
        layers.append((COMMAND_LINE, OmegaConf.create(flags)))
    layers.append((COMMAND_LINE, _parse_overrides(list(overrides))))
    origins: dict[str, str] = {}
    for name, conf in layers:
        for key in _flat_keys(OmegaConf.to_container(conf, resolve=False)):
            origins[key] = name
    merged = OmegaConf.merge(*[conf for _, conf in layers])

    def origin_of(key_path: str) -> str:
        origin = origins.get(key_path, source)
        return "" if origin == source else f" ({origin})"

    return _resolve(merged, source), OmegaConf.to_container(merged, resolve=False), origin_of


def load_config_file(
    stage: StageSpec, path: str | os.PathLike, overrides: list[str] = (), check_files: bool = True
) -> RunConfig:
    """Merge the file chain and overrides, check the schema and cross-field rules (and that named files exist)."""
    source = str(path)
    resolved, unresolved, origin_of = merge_layers(path, overrides)
    problems: list[str] = []
    shared_fields = [f.name for f in dataclasses.fields(RunConfig) if f.name not in INTERNAL_FIELDS]
    shared = {k: v for k, v in resolved.items() if k in shared_fields and k != "data"}
    checked = _check_fields(shared, RunConfig, "", origin_of, problems)
    data = resolved.get("data") or {}
    if not isinstance(data, dict):
        problems.append(f"data{origin_of('data')}: expected a section (a mapping)")
        data = {}
    checked_data = _check_fields(data, stage.data_class, "data.", origin_of, problems)

    sections = {}
    for name, cls in stage.sections.items():
        value = resolved.get(name) or {}
        if not isinstance(value, dict):
            problems.append(f"{name}{origin_of(name)}: expected a section (a mapping)")
            continue
        sections[name] = _check_fields(value, cls, f"{name}.", origin_of, problems)
    built_sections = {name: _build(stage.sections[name], values) for name, values in sections.items()}

    training_args = resolved.get("training_args") or {}
    if not isinstance(training_args, dict):
        problems.append(f"training_args{origin_of('training_args')}: expected a mapping")
        training_args = {}
    owned = {**SHARED_OWNED_TRAINING_ARGS, **stage.owned_training_args}
    checked_ta = _check_fields(
        {k: v for k, v in training_args.items() if k not in owned},
        stage.args_class(built_sections),
        "training_args.",
        origin_of,
        problems,
    )
    checked_ta.update({k: v for k, v in training_args.items() if k in owned})
    checked_ta.setdefault("output_dir", stage.default_output_dir)

    known = set(shared_fields) | set(stage.sections) | {"training_args"}
    for key in resolved:
        if key not in known:
            problems.append(f"{key}{origin_of(key)}: unknown key{_closest(key, sorted(known))}")
    cfg = _build(RunConfig, checked)
    cfg.data = _build(stage.data_class, checked_data)
    cfg.training_args = checked_ta
    cfg.sections = built_sections
    cfg.source = source
    if isinstance(cfg.trace, str):
        cfg.trace = [cfg.trace]
    problems += validate(cfg, stage, origin_of, check_files)
    if problems:
        raise ConfigError(problems, source)
    cfg.resolved = redact(resolved, unresolved)
    return cfg
