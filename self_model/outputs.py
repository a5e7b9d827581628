"""A training output directory opened for the after-training tools (merge, infer, evaluate, serve, quantize).

The user names the directory and nothing else: it holds a full model or an adapter (whose base is recorded in
`manifest.json`, else in PEFT's `adapter_config.json`), the tokenizer, the chat template (`template.json`, or the
tokenizer's own `chat_template`) and thus the stop tokens. A hub id or any Hugging Face model directory opens too.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from self_model.config import locate, path_exists_or_hub_id
from self_model.errors import UserError
from self_model.template import TEMPLATE_DIR, ChatTemplate, Renderer, TokenizerTemplate, builtin_templates

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32",
          "bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read it as JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


@dataclass
class OutputDir:
    """A model to run: `path` (a directory or hub id); for an adapter, also its `base` model."""

    path: str
    base: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def is_adapter(self) -> bool:
        return self.base is not None

    @property
    def name(self) -> str:
        return Path(self.path).name or self.path

    @classmethod
    def open(cls, path: str, base: str | None = None) -> OutputDir:
        """Check that `path` is a model or an adapter whose base can be found; nothing is loaded."""
        local = Path(locate(path) or path)
        if not local.exists():
            if path_exists_or_hub_id(path) and not Path(path).is_absolute():
                return cls(path)  # a hub id, loaded from the cache or the hub
            raise UserError(f"model {path}: no such directory (give a stage's output_dir, a model directory or a hub id)")
        if not local.is_dir():
            raise UserError(f"model {path}: not a directory (give a stage's output_dir, a model directory or a hub id)")
        manifest = _read_json(local / "manifest.json") if (local / "manifest.json").is_file() else {}
        if (local / "adapter_config.json").is_file():
            return cls(str(local), _adapter_base(local, base, manifest), manifest)
        if (local / "config.json").is_file() and any((local / name).is_file() for name in WEIGHT_FILES):
            return cls(str(local), None, manifest)
        raise UserError(f"model {path}: neither a model directory (config.json and {WEIGHT_FILES[0]}) nor an adapter "
                        "(adapter_config.json); give the output_dir of a finished stage")

    def training_config(self) -> dict[str, Any]:
        """The resolved config the run saved (`config.yaml`), or {} when there is none."""
        import yaml

        config_file = Path(self.path) / "config.yaml"
        if not config_file.is_file():
            return {}
        try:
            return yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{config_file}: not valid YAML ({err})") from None

    def has_template(self, tokenizer) -> bool:
        return (Path(self.path) / "template.json").is_file() or bool(getattr(tokenizer, "chat_template", None))

    def quantization(self) -> str | None:
        """The quantization method of the weights (`bitsandbytes`, `compressed-tensors`, ...), or None."""
        config_file = Path(self.base or self.path) / "config.json"
        if not config_file.is_file():
            return None
        return (_read_json(config_file).get("quantization_config") or {}).get("quant_method")

    def load_tokenizer(self):
        """The tokenizer saved with the run (an adapter's own, else its base's); pad falls back to EOS."""
        from self_model.modeling import load_saved_tokenizer, not_available

        source = self.path
        if self.base and not (Path(self.path) / "tokenizer_config.json").is_file():
            source = self.base
        try:
            tokenizer = load_saved_tokenizer(source)
        except (OSError, ValueError) as err:
            raise not_available("tokenizer", source, err) from None
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer

    def renderer(self, tokenizer, template: str | None = None) -> Renderer:
        """The run's chat template: `template` (a built-in name or a JSON file) if given, else `template.json`, else
        the tokenizer's own chat_template."""
        if template:
            path = TEMPLATE_DIR / f"{template}.json" if template in builtin_templates() else Path(locate(template))
            if not path.is_file():
                raise UserError(f"template {template!r}: neither a built-in template ({', '.join(builtin_templates())}) "
                                "nor a template JSON file")
            chosen = ChatTemplate.from_file(path)
        elif (Path(self.path) / "template.json").is_file():
            chosen = ChatTemplate.from_file(Path(self.path) / "template.json")
        elif getattr(tokenizer, "chat_template", None):
            return TokenizerTemplate(tokenizer, self.path)
        else:
            raise UserError(f"model {self.path} has no chat template (no template.json, no chat_template in its "
                            f"tokenizer): pass --template with one of {', '.join(builtin_templates())}")
        chosen.check_tokenizer(tokenizer, self.path)
        return chosen

    def load_model(self, tokenizer, dtype: str = "auto", device: str = "auto"):
        """The model in eval mode: the full model, or the base with the adapter on top (unmerged)."""
        import torch
        from transformers import AutoModelForCausalLM

        from self_model.modeling import fit_embeddings, not_available

        torch_dtype = DTYPES[dtype] if DTYPES[dtype] == "auto" else getattr(torch, DTYPES[dtype])
        source = self.base or self.path
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
        except OSError as err:
            raise not_available("model", source, err) from None
        if self.is_adapter:
            from peft import PeftModel

            fit_embeddings(model, tokenizer)  # as the training run did before it added the adapters
            model = PeftModel.from_pretrained(model, self.path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return model.to(device).eval()


def _adapter_base(adapter: Path, base: str | None, manifest: dict) -> str:
    """The base model of an adapter: `base` if given, else the manifest's starting model, else PEFT's record."""
    recorded = manifest.get("model_name_or_path")
    if base is None and not recorded:
        recorded = _read_json(adapter / "adapter_config.json").get("base_model_name_or_path")
    chosen = base or recorded
    if not chosen:
        raise UserError(f"adapter {adapter}: no base model recorded in manifest.json or adapter_config.json; "
                        "pass --base PATH")
    found = locate(chosen)
    if Path(found).is_dir():
        return str(found)
    if Path(chosen).is_absolute() or not path_exists_or_hub_id(chosen):
        given = "given by --base" if base else "recorded in its manifest"
        raise UserError(f"adapter {adapter}: its base model {chosen} ({given}) is not found; pass --base PATH")
    return chosen


def new_output_dir(path: str, overwrite: bool) -> Path:
    """An empty `<path>.partial` directory to write into; `finish_output` moves it into place. An existing
    non-empty `path` needs `overwrite`."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"--output_dir {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise UserError(f"--output_dir {target} is not empty; pass --overwrite to replace it, or choose another")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def finish_output(partial: Path, target: str) -> Path:
    """Replace `target` by the completed `partial` directory (a crash before this leaves no half-written model)."""
    target_path = Path(target)
    shutil.rmtree(target_path, ignore_errors=True)
    partial.rename(target_path)
    return target_path
