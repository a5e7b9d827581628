"""The names the design document gives some settings, mapped onto this project's keys in one place.

The design documents one `config/self_model_config/rlhf.yaml` read by train_ppo.py, train_grpo.py and train_dpo.py:
a top-level `reward_model_name_or_path`, a `ppo:` section (`actor_lr`, `rollout_n`, ...) for the RL stages and a
`dpo:` section (`beta`, `loss_type`, `data.*`, `training_args.*`) for the DPO family; and `peft.qlora: true`. Inside
the code each concept has one name (the `rl` and `dpo` sections of self_model/rlhf/rl_config.py and train_dpo.py);
a documented name is an alias of it. Writing both spellings of one setting is an error. The stages that share
rlhf.yaml set aside the parts of the others, and say so; for any other stage those parts are unknown keys.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from self_model.config.files import Merged
from self_model.config.schema import closest
from self_model.errors import ConfigError

logger = logging.getLogger(__name__)

RL_STAGES = ("ppo", "grpo")
SHARING_STAGES = (*RL_STAGES, "dpo")  # the stages that read the one rlhf.yaml
CONSOLE_LOGGERS = ("console", "file")  # verl's loggers that print or write locally: always on here


def logger_to_trace(value: Any) -> Any:
    """verl's `trainer.logger` (a name or a list, console included) as our `trace` backends."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list):
        return value  # `trace` reports the wrong type
    backends = [name for name in names if name not in CONSOLE_LOGGERS]
    return backends or "none"


@dataclass(frozen=True)
class Alias:
    """`name` as the design writes it means our `key`; a section alias maps each of its keys alike."""

    name: str
    key: str
    stages: tuple[str, ...] | None = None  # the stages that read it; None: every stage
    convert: Callable[[Any], Any] | None = None
    implies: dict[str, Callable[[Any], Any]] = field(default_factory=dict)  # our keys it also sets, unless written
    section: bool = False


ALIASES = (
    Alias("reward_model_name_or_path", "rl.reward.reward_model", RL_STAGES,
          implies={"rl.reward.functions": lambda value: [] if value else None}),  # the reward model scores alone
    Alias("ppo.train_file", "data.train_file", RL_STAGES),
    Alias("ppo.eval_file", "data.eval_file", RL_STAGES),
    Alias("ppo.max_prompt_length", "rl.rollout.max_prompt_length", RL_STAGES),
    Alias("ppo.max_response_length", "rl.rollout.max_response_length", RL_STAGES),
    Alias("ppo.rollout_backend", "rl.rollout.engine", RL_STAGES),
    Alias("ppo.rollout_n", "rl.rollout.n", RL_STAGES),
    Alias("ppo.actor_lr", "rl.actor.learning_rate", RL_STAGES),
    Alias("ppo.ppo_mini_batch_size", "rl.actor.ppo_mini_batch_size", RL_STAGES),
    Alias("ppo.ppo_micro_batch_size_per_gpu", "rl.actor.ppo_micro_batch_size_per_gpu", RL_STAGES),
    Alias("ppo.kl_loss_coef", "rl.actor.kl_loss_coef", RL_STAGES),
    Alias("ppo.use_kl_loss", "rl.actor.use_kl_loss", RL_STAGES),
    Alias("ppo.logger", "trace", RL_STAGES, convert=logger_to_trace),
    Alias("ppo.n_gpus_per_node", "rl.cluster.n_gpus_per_node", RL_STAGES),
    Alias("ppo.nnodes", "rl.cluster.nnodes", RL_STAGES),
    Alias("dpo.data", "data", ("dpo",), section=True),
    Alias("dpo.training_args", "training_args", ("dpo",), section=True),
    Alias("peft.qlora", "peft.method", convert=lambda on: "qlora" if on is True else "lora" if on is False else on,
          implies={"peft.enabled": lambda on: True if on is True else None}),
)
# Sections that hold only aliases (their unknown keys are errors in every stage), and sections of one stage that
# the others set aside when they read a shared file.
ALIAS_SECTIONS = ("ppo",)
STAGE_SECTIONS = {"ppo": RL_STAGES, "dpo": ("dpo",)}


def _has(tree: dict, path: str) -> bool:
    node = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _get(tree: dict, path: str) -> Any:
    for part in path.split("."):
        tree = tree[part]
    return tree


def _pop(tree: dict, path: str) -> Any:
    """Remove a key, and the sections it leaves empty."""
    *parents, last = path.split(".")
    value = _get(tree, ".".join(parents)).pop(last) if parents else tree.pop(last)
    while parents and _get(tree, ".".join(parents)) == {}:
        name = parents.pop()
        (_get(tree, ".".join(parents)) if parents else tree).pop(name)
    return value


def _set(tree: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            return  # the section has the wrong type; the schema check reports it
    tree[last] = value


def _written(tree: dict) -> list[tuple[str, str, Alias]]:
    """(the key path written, our key, its alias) for every alias the config uses."""
    found = []
    for alias in ALIASES:
        if not _has(tree, alias.name):
            continue
        value = _get(tree, alias.name)
        if alias.section and isinstance(value, dict):
            found += [(f"{alias.name}.{key}", f"{alias.key}.{key}", alias) for key in value]
        else:
            found.append((alias.name, alias.key, alias))
    return found


def apply_aliases(merged: Merged, stage: str) -> Merged:
    """The merged config with each documented name moved onto our key. Both spellings of one setting, or an unknown
    key of an alias-only section, are errors."""
    resolved, unresolved, origins = merged.resolved, merged.unresolved, dict(merged.origins)
    problems, set_aside = [], set()
    for section in ALIAS_SECTIONS:
        valid = sorted(a.name.split(".", 1)[1] for a in ALIASES if a.name.startswith(section + "."))
        keys = resolved.get(section)
        for key in keys if isinstance(keys, dict) else []:
            if key not in valid:
                problems.append(f"{section}.{key}{merged.origin_of(f'{section}.{key}')}: unknown key"
                                f"{closest(key, valid)} (valid: {', '.join(valid)})")
    for path, key, alias in _written(resolved):
        if alias.stages is not None and stage not in alias.stages:
            if stage in SHARING_STAGES:
                set_aside.add(path.split(".")[0])
            continue
        if _has(resolved, key):
            problems.append(f"{path}{merged.origin_of(path)}: the same setting as {key}{merged.origin_of(key)}; "
                            f"write it once (as {path} or as {key})")
            continue
        written = _pop(resolved, path)
        value = alias.convert(written) if alias.convert else written
        raw = _pop(unresolved, path) if _has(unresolved, path) else value
        _set(resolved, key, value)
        _set(unresolved, key, raw if isinstance(raw, str) and "${" in raw else value)
        origin = merged.origins.get(path, merged.source)
        origins[key] = f"as {path}" if origin == merged.source else f"{origin}, as {path}"
        for implied, value_of in alias.implies.items():
            implied_value = value_of(written)
            if implied_value is not None and not _has(resolved, implied):
                _set(resolved, implied, implied_value)
                _set(unresolved, implied, implied_value)
    if problems:
        raise ConfigError(problems, merged.source)
    if stage in SHARING_STAGES:
        set_aside |= {name for name, stages in STAGE_SECTIONS.items() if stage not in stages and name in resolved}
    for name in sorted(set_aside):
        resolved.pop(name, None)
        unresolved.pop(name, None)
        readers = STAGE_SECTIONS.get(name) or next(a.stages for a in ALIASES if a.name == name)
        logger.info(f"{merged.source}: `{name}` is for the {'/'.join(readers)} stage; the {stage} stage sets it aside")
    return Merged(resolved, unresolved, origins, merged.source)
