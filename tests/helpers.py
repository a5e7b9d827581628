"""Test helpers: the repo's tiny offline assets, ../shared (skipped when absent), a CLI runner, tiny configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY = REPO / "examples" / "tiny"
FORMATS = REPO / "tests" / "assets" / "formats"  # one small file per accepted input shape (make_assets.py)
TINY_TOKENIZER = TINY / "tokenizer"
TINY_MODEL_CONFIG = TINY / "model_config.json"
SFT_TRAIN = TINY / "data" / "sft_train.jsonl"
SFT_EVAL = TINY / "data" / "sft_eval.jsonl"


def shared_path(*parts: str) -> Path:
    """A path under ../shared; skips the test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent")
    return path


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def write_yaml(path: Path, data: dict) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def run_script(script: str, *args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a stage script as a user would; returns the completed process (text output)."""
    return subprocess.run(
        [sys.executable, str(REPO / script), *args], cwd=cwd, env=script_env(), capture_output=True, text=True, timeout=timeout
    )


def script_env() -> dict[str, str]:
    """The environment for a script under test: offline, unbuffered, no trackers."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


def tiny_sft_config(tmp_path: Path, **sections) -> dict:
    """A config for the tiny demo model writing into tmp_path; keyword sections are merged on top."""
    config = {
        "tokenizer_name_or_path": str(TINY_TOKENIZER),
        "template": "qwen2_chatml",
        "model": {"init_from_config": str(TINY_MODEL_CONFIG)},
        "data": {"train_file": f"{SFT_TRAIN}#96", "eval_file": f"{SFT_EVAL}#32", "max_length": 128},
        "trace": "none",
        "training_args": {
            "output_dir": str(tmp_path / "out"),
            "per_device_train_batch_size": 8,
            "learning_rate": 3e-3,
            "max_steps": 12,
            "logging_steps": 4,
            "save_strategy": "no",
            "seed": 0,
        },
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(config.get(name), dict):
            config[name] = {**config[name], **values}
        else:
            config[name] = values
    return config


def random_model_dir(path: Path, **config) -> Path:
    """A random-init tiny model directory (`config` changes the tiny config) with the tiny tokenizer and no chat
    template of its own; untied, wide weights make its greedy replies long and varied (tied small ones repeat the
    last token)."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM, set_seed

    set_seed(0)
    settings = {"tie_word_embeddings": False, "initializer_range": 0.2, **config}
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY_MODEL_CONFIG, **settings)).save_pretrained(path)
    for item in TINY_TOKENIZER.iterdir():
        if item.name != "chat_template.jinja":
            shutil.copy(item, path / item.name)
    return path


def train_tiny_outputs(root: Path) -> dict[str, Path]:
    """A `base` model directory (random_model_dir) and `lora` / `dora` adapter outputs the SFT stage trained on it."""
    from self_model.config import load_config_file
    from self_model.fine_tuning.train_finetune import STAGE, train

    outputs = {"base": random_model_dir(root / "base"), "lora": root / "lora", "dora": root / "dora"}
    data = {"train_file": f"{SFT_TRAIN}#16", "eval_file": None, "max_length": 64}
    for method in ("lora", "dora"):
        config = tiny_sft_config(root, model_name_or_path=str(outputs["base"]), model={"init_from_config": None},
                                 peft={"enabled": True, "method": method}, data=data,
                                 training_args={"output_dir": str(outputs[method]), "max_steps": 3,
                                                "learning_rate": 1e-2})
        train(load_config_file(STAGE, write_yaml(root / f"{method}.yaml", config)))
    return outputs
