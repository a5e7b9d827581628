"""What a stage adds to the shared schema (`StageSpec`), the cross-field rules, and the command line.

A stage script calls `load_config(STAGE, argv)`; it returns a `RunConfig` whose sections are checked dataclasses
and whose `training_args` hold only fields of the stage's TRL/transformers config class. Every problem is reported
at once, naming the file (or the command line), the key path and the closest valid key, before torch or any model
is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from self_model.config.aliases import apply_aliases
from self_model.config.files import locate, merge_layers, path_exists_or_hub_id, redact
from self_model.config.schema import OriginOf, build, check_fields, closest, field_types
from self_model.config.sections import INTERNAL_FIELDS, TRACE_BACKENDS, RunConfig
from self_model.config.training_fields import training_arg_types
from self_model.errors import ConfigError
from self_model.template import builtin_templates


@dataclass(frozen=True)
class Owned:
    """A training_args field this project decides. `key` is what the user writes instead; `value(cfg)` is what the
    TRL config gets (no function, or None returned: the field keeps TRL's default)."""

    key: str
    value: Callable[[RunConfig], Any] | None = None


def from_key(key: str) -> Owned:
    """A training_args field that takes the value of one of our keys, e.g. max_length from data.max_length."""
    return Owned(key, lambda cfg: value_at(cfg, key))


def value_at(cfg: RunConfig, key_path: str) -> Any:
    """The value of `section.key` in a built config: a stage section, a shared section, or a top-level key."""
    head, *rest = key_path.split(".")
    node = cfg.sections[head] if head in cfg.sections else getattr(cfg, head)
    for part in rest:
        node = getattr(node, part)
    return node


def _checkpointing(cfg: RunConfig) -> bool | None:
    setting = cfg.model.gradient_checkpointing
    return setting if isinstance(setting, bool) else None  # `auto`: the memory plan decides


# Fields every stage owns: `report_to` comes from `trace`, `resume_from_checkpoint` from `resume`.
SHARED_OWNED = {
    "report_to": Owned("trace"),
    "resume_from_checkpoint": Owned("resume"),
    "gradient_checkpointing": Owned("model.gradient_checkpointing", _checkpointing),
}


@dataclass
class StageSpec:
    """What a stage adds to the shared schema."""

    name: str
    # `module:Class` of the TRL/transformers config class, or a function of the built sections that names it
    training_args_class: str | Callable[[dict[str, Any]], str]
    data_class: type
    sections: dict[str, type] = field(default_factory=dict)
    owned_training_args: dict[str, Owned] = field(default_factory=dict)
    # training_args defaults of this project, used where the user set none: (config) -> {field: value}
    training_defaults: Callable[[RunConfig], dict[str, Any]] | None = None
    # the stage's own cross-field rules: (config) -> [(key, message)]
    checks: Callable[[RunConfig], list[tuple[str, str]]] | None = None
    # what one micro-step computes, for the memory plan: (config, built training args) -> memory.Workload
    workload: Callable[[RunConfig, Any], Any] | None = None

    @property
    def default_output_dir(self) -> str:
        return f"checkpoints/{self.name}"

    @property
    def owned(self) -> dict[str, Owned]:
        return {**SHARED_OWNED, **self.owned_training_args}

    def args_class_path(self, sections: dict[str, Any]) -> str:
        """`module:Class` that `training_args` are checked against, given the stage's built sections."""
        if isinstance(self.training_args_class, str):
            return self.training_args_class
        return self.training_args_class(sections)

    def owned_values(self, cfg: RunConfig) -> dict[str, Any]:
        """The training_args fields our sections set, with their values."""
        values = {name: owned.value(cfg) for name, owned in self.owned.items() if owned.value}
        return {name: value for name, value in values.items() if value is not None}

    def default_values(self, cfg: RunConfig) -> dict[str, Any]:
        """This project's defaults for the training_args fields the user left unset."""
        defaults = self.training_defaults(cfg) if self.training_defaults else {}
        return {name: value for name, value in defaults.items() if name not in cfg.training_args}


def validate(cfg: RunConfig, stage: StageSpec, origin_of: OriginOf, check_files: bool = True) -> list[str]:
    """Cross-field rules of the shared sections, then the data class's and the stage's; messages quote the values."""
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
        if check_files and value and not path_exists_or_hub_id(value):
            made_by = " (tokenizer/extend_vocab.py writes it: run that first)" if "merged_" in value else ""
            bad(key, f"{value!r} is neither an existing path nor a hub id{made_by}")
    if not cfg.tokenizer_name_or_path and not cfg.model_name_or_path:
        bad("tokenizer_name_or_path", "missing: a tokenizer is needed when training from model.init_from_config")

    if cfg.template and cfg.template_path:
        bad("template_path", "set either template or template_path, not both")
    if cfg.template and cfg.template not in ("tokenizer", "auto") and cfg.template not in builtin_templates():
        names = [*builtin_templates(), "tokenizer", "auto"]
        bad("template", f"unknown template {cfg.template!r}{closest(cfg.template, names)} (valid: {', '.join(names)})")
    if check_files and cfg.template_path and not Path(cfg.template_path).is_file():
        bad("template_path", f"file not found: {cfg.template_path}")

    for name in cfg.trace:
        if name not in TRACE_BACKENDS:
            bad("trace", f"unknown backend {name!r}{closest(name, TRACE_BACKENDS)} (valid: {', '.join(TRACE_BACKENDS)})")
    if "none" in cfg.trace and len(cfg.trace) > 1:
        bad("trace", "`none` cannot be combined with other backends")

    data = cfg.data
    if not data.train_file:
        bad("data.train_file", "missing: name at least one training file or dataset id")
    for key in ("train_file", "eval_file"):
        specs = getattr(data, key) or []
        for spec in [specs] if isinstance(specs, str) else specs:
            path = re.sub(r"#\d+$", "", spec)
            if check_files and not path_exists_or_hub_id(path):
                bad(f"data.{key}", f"file not found: {path}")
    if not 0.0 <= data.eval_split < 1.0:
        bad("data.eval_split", f"must be in [0, 1), got {data.eval_split}")
    if data.eval_file and data.eval_split:
        bad("data.eval_split", f"set eval_file or eval_split ({data.eval_split}), not both")

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

    deepspeed = cfg.training_args.get("deepspeed")
    if check_files and isinstance(deepspeed, str) and not Path(deepspeed).is_file():
        bad("training_args.deepspeed", f"file not found: {deepspeed} (a DeepSpeed JSON such as "
            "config/self_model_config/deepspeed/ds_config.json)")
    for key, owned in stage.owned.items():
        if key in cfg.training_args:
            bad(f"training_args.{key}", f"set by this project: use `{owned.key}` instead")
    if cfg.resume and cfg.overwrite:
        bad("resume", "resume and overwrite exclude each other")
    for key, message in data.problems() + (stage.checks(cfg) if stage.checks else []):
        bad(key, message)
    return problems


def _locate_paths(cfg: RunConfig) -> None:
    for key in ("model_name_or_path", "tokenizer_name_or_path", "template_path"):
        setattr(cfg, key, locate(getattr(cfg, key)))
    cfg.model.init_from_config = locate(cfg.model.init_from_config)
    if isinstance(cfg.training_args.get("deepspeed"), str):
        cfg.training_args["deepspeed"] = locate(cfg.training_args["deepspeed"])
    for key in ("train_file", "eval_file"):
        value = getattr(cfg.data, key)
        setattr(cfg.data, key, [locate(v) for v in value] if isinstance(value, list) else locate(value))


def build_arg_parser(stage: StageSpec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=f"Run the {stage.name} stage from a YAML config.",
        epilog="Overrides: section.key=value, e.g. training_args.learning_rate=1e-4 peft.lora_r=16",
    )
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--dry-run", action="store_true", help="validate, build and preview the data; load no weights")
    parser.add_argument("--trace", action="append", help="tracking backend (repeatable); overrides `trace`")
    parser.add_argument("--resume", action="store_true", help="resume from output_dir's last checkpoint (resume=PATH for another)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
    parser.add_argument("--deepspeed", metavar="FILE", help="DeepSpeed config JSON; sets training_args.deepspeed")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    return parser


def load_config(stage: StageSpec, argv: list[str] | None = None) -> tuple[RunConfig, argparse.Namespace]:
    """Parse the command line (flags and overrides in any order) and the YAML chain into a checked RunConfig."""
    args = build_arg_parser(stage).parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.trace:
        overrides.append(f"trace=[{','.join(args.trace)}]")
    if args.resume:
        overrides.append("resume=true")
    if args.overwrite:
        overrides.append("overwrite=true")
    if args.deepspeed:
        overrides.append(f"training_args.deepspeed={args.deepspeed}")
    return load_config_file(stage, args.config, overrides), args


def load_config_file(
    stage: StageSpec, path: str | os.PathLike, overrides: list[str] = (), check_files: bool = True
) -> RunConfig:
    """Merge the file chain and overrides, check the schema and cross-field rules (and that named files exist)."""
    merged = apply_aliases(merge_layers(path, overrides), stage.name)
    resolved, origin_of = merged.resolved, merged.origin_of
    problems: list[str] = []
    shared_types = {k: v for k, v in field_types(RunConfig).items() if k not in INTERNAL_FIELDS}
    shared = {k: v for k, v in resolved.items() if k in shared_types and k != "data"}
    checked = check_fields(shared, shared_types, "", origin_of, problems)
    checked_data = check_fields(_section(resolved, "data", origin_of, problems), field_types(stage.data_class), "data.",
                                origin_of, problems)
    sections = {name: build(cls, check_fields(_section(resolved, name, origin_of, problems), field_types(cls),
                                              f"{name}.", origin_of, problems))
                for name, cls in stage.sections.items()}

    training_args = _section(resolved, "training_args", origin_of, problems)
    checked_args = check_fields({k: v for k, v in training_args.items() if k not in stage.owned},
                                training_arg_types(stage.args_class_path(sections)), "training_args.", origin_of, problems)
    checked_args.update({k: v for k, v in training_args.items() if k in stage.owned})
    checked_args.setdefault("output_dir", stage.default_output_dir)

    known = set(shared_types) | set(stage.sections) | {"training_args"}
    for key in resolved:
        if key not in known:
            problems.append(f"{key}{origin_of(key)}: unknown key{closest(key, sorted(known))}")
    cfg = build(RunConfig, checked)
    cfg.data = build(stage.data_class, checked_data)
    cfg.training_args = checked_args
    cfg.sections = sections
    cfg.source = str(path)
    cfg.user_keys = frozenset(merged.origins)
    if isinstance(cfg.trace, str):
        cfg.trace = [cfg.trace]
    problems += validate(cfg, stage, origin_of, check_files)
    if problems:
        raise ConfigError(problems, str(path))
    cfg.resolved = redact(resolved, merged.unresolved)
    return cfg


def _section(resolved: dict, name: str, origin_of: OriginOf, problems: list[str]) -> dict:
    """A section's mapping (empty when absent); anything else is a problem."""
    value = resolved.get(name) or {}
    if not isinstance(value, dict):
        problems.append(f"{name}{origin_of(name)}: expected a section (a mapping)")
        return {}
    return value


def replace_model(cfg: RunConfig, model_name_or_path: str) -> RunConfig:
    """The config with another starting model, loaded from a path (no init_from_config, no adapters)."""
    return dataclasses.replace(cfg, model_name_or_path=model_name_or_path,
                               model=dataclasses.replace(cfg.model, init_from_config=None))
