"""Config files: the `base:` chain, `key=value` overrides, `${oc.env:VAR}` interpolation, redaction of secrets,
and where relative paths are looked up."""

from __future__ import annotations

import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from self_model.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMAND_LINE = "command line"
# a key whose whole name says it holds a secret (`hub_token`, `wandb_api_key`); never `tokenizer_name_or_path`
SECRET_KEY_PATTERN = re.compile(
    r"(\w+_)?(api_?key|password|passwd|secret|secret_key|secret_access_key|access_key_id|private_key|credentials)"
    r"|((hub|hf|auth|access|api|bearer|refresh|github|wandb|swanlab)_)?token", re.IGNORECASE)
REDACTED = "<redacted>"
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt")


@dataclass
class Merged:
    """The merged layers of one config: resolved values, unresolved ones (`${oc.env:...}` kept, for saving), and
    where each key was set."""

    resolved: dict
    unresolved: dict
    origins: dict[str, str]
    source: str

    def origin_of(self, key_path: str) -> str:
        """` (command line)` when the key was set outside the config file itself, else nothing."""
        origin = self.origins.get(key_path, self.source)
        return "" if origin == self.source else f" ({origin})"

    def was_set(self, key_path: str) -> bool:
        """Whether the user wrote this key (in a file of the chain or on the command line)."""
        return key_path in self.origins


def flat_keys(node: Any, prefix: str = "") -> typing.Iterator[str]:
    """Every key path of a nested mapping: `a`, `a.b`, ..."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{prefix}{key}"
            yield from flat_keys(value, f"{prefix}{key}.")


def read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[str, DictConfig]]:
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
    for name in [] if base is None else ([base] if isinstance(base, str) else list(base)):
        layers += read_yaml(path.parent / str(name), (*chain, path))
    layers.append((str(path), conf))
    return layers


def parse_overrides(overrides: list[str]) -> DictConfig:
    bad = [f"override {o!r} must look like section.key=value" for o in overrides if "=" not in o or not o.split("=", 1)[0]]
    bad += [f"{key}: a secret on the command line is seen by other users (ps), kept in the shell's history and "
            f"recorded by trackers; export it instead and write {key}=${{oc.env:VAR}} (or set it so in the config)"
            for key, _, value in (o.partition("=") for o in overrides)
            if is_secret_key(key) and value and not value.startswith("${oc.env:")]
    if bad:
        raise ConfigError(bad, COMMAND_LINE)
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


def merge_layers(path: str | os.PathLike | None, overrides: list[str] = (), flags: dict | None = None) -> Merged:
    """The YAML chain (none when `path` is None), then `flags` and `key=value` overrides from the command line."""
    source = str(path) if path is not None else COMMAND_LINE
    layers = read_yaml(Path(path)) if path is not None else []
    if flags:
        layers.append((COMMAND_LINE, OmegaConf.create(flags)))
    layers.append((COMMAND_LINE, parse_overrides(list(overrides))))
    origins: dict[str, str] = {}
    for name, conf in layers:
        for key in flat_keys(OmegaConf.to_container(conf, resolve=False)):
            origins[key] = name
    merged = OmegaConf.create({})
    for name, conf in layers:
        try:
            merged = OmegaConf.merge(merged, conf)
        except OmegaConfBaseException:
            raise ConfigError([_clash(merged, conf, name)], source) from None
    return Merged(_resolve(merged, source), OmegaConf.to_container(merged, resolve=False), origins, source)


def _clash(merged: DictConfig, layer: DictConfig, layer_name: str) -> str:
    """Why `layer` cannot be merged: the first key where it puts a list or value over a section, or the reverse."""
    def walk(old: Any, new: Any, prefix: str) -> str | None:
        for key, value in new.items():
            path, before = f"{prefix}{key}", old.get(key) if isinstance(old, dict) else None
            if isinstance(before, dict) and isinstance(value, dict):
                found = walk(before, value, f"{path}.")
                if found:
                    return found
            elif before is not None and value is not None and isinstance(before, dict) != isinstance(value, dict):
                kinds = ("a section" if isinstance(before, dict) else "a value", "a section" if isinstance(value, dict)
                         else "a list" if isinstance(value, list) else "a value")
                return f"{path} ({layer_name}): {kinds[1]} where the files before it have {kinds[0]}"
        return None

    old, new = OmegaConf.to_container(merged, resolve=False), OmegaConf.to_container(layer, resolve=False)
    return walk(old, new, "") or f"{layer_name}: cannot be merged with the files before it"


def redact(node: Any, unresolved: Any = None) -> Any:
    """The config as it can be saved and rerun: values read from the environment stay `${oc.env:VAR}`, and a secret
    written literally (a key such as `hub_token`, `api_key`) is left out, to come from the environment next time."""
    if isinstance(node, dict):
        raw = unresolved if isinstance(unresolved, dict) else {}
        out = {}
        for key, value in node.items():
            raw_value = raw.get(key)
            if isinstance(raw_value, str) and "oc.env" in raw_value:
                out[key] = raw_value
            elif not (is_secret_key(key) and value not in (None, "", False)):
                out[key] = redact(value, raw_value)
        return out
    if isinstance(node, list):
        raw = unresolved if isinstance(unresolved, list) and len(unresolved) == len(node) else [None] * len(node)
        return [redact(v, r) for v, r in zip(node, raw)]
    return node


def is_secret_key(key: Any) -> bool:
    """Whether a config key (the last part of a dotted path) names a secret."""
    return bool(SECRET_KEY_PATTERN.fullmatch(str(key).rsplit(".", 1)[-1].replace("-", "_")))


def path_exists_or_hub_id(value: str) -> bool:
    """Whether `value` is an existing local path or could be a hub id (`org/name`, `name`); `dir/name` under a local
    directory (`tokenizer/merged_model`, `checkpoints/sft`) is a local path."""
    if Path(value).exists():
        return True
    looks_local = value.startswith((".", "/", "~")) or value.endswith(LOCAL_SUFFIXES)
    parent = value.split("/", 1)[0] if "/" in value else ""
    under_local_dir = bool(parent) and (Path(parent).is_dir() or (REPO_ROOT / parent).is_dir())
    return not looks_local and not under_local_dir and value.count("/") <= 1


def locate(value: str | None) -> str | None:
    """A relative path is looked up in the current directory, then in the repository root (`#N` kept)."""
    if not value or Path(value).is_absolute() or Path(value).exists():
        return value
    name, sep, count = value.partition("#")
    candidate = REPO_ROOT / name
    return f"{candidate}{sep}{count}" if candidate.exists() else value
