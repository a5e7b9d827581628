"""SFT on a CUDA GPU: bf16 full training and QLoRA (4-bit base weights) on the tiny model. Skipped without CUDA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_sft_config, write_yaml

from self_model.config import load_config_file
from self_model.fine_tuning.train_finetune import STAGE, train

pytestmark = pytest.mark.gpu


def run(tmp_path, **sections):
    path = write_yaml(tmp_path / "sft.yaml", tiny_sft_config(tmp_path, eval_before_training=True, **sections))
    trainer = train(load_config_file(STAGE, path))
    metrics = json.loads((Path(trainer.args.output_dir) / "manifest.json").read_text())["metrics"]
    return trainer, metrics


def test_bf16_full_sft_on_gpu(tmp_path):
    trainer, metrics = run(tmp_path, training_args={"bf16": True, "max_steps": 30})
    assert trainer.args.bf16 and next(trainer.model.parameters()).is_cuda
    assert metrics["eval_loss"] < metrics["eval_loss_before"] - 1.0


def test_qlora_trains_4bit_base_and_saves_adapter(tmp_path):
    pytest.importorskip("bitsandbytes")
    base_dir = tmp_path / "base"
    run(tmp_path / "b", training_args={"output_dir": str(base_dir), "max_steps": 2})
    trainer, metrics = run(
        tmp_path,
        model_name_or_path=str(base_dir),
        model={"init_from_config": None},
        peft={"enabled": True, "method": "qlora", "lora_r": 8, "target_modules": "all-linear"},
        training_args={"bf16": True, "max_steps": 30, "learning_rate": 1e-2},
    )
    quantized = [m for m in trainer.model.modules() if type(m).__name__ == "Linear4bit"]
    assert quantized, "no 4-bit layers: the base model was not quantized"
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert (tmp_path / "out" / "adapter_config.json").is_file()
