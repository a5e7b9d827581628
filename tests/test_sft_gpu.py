"""SFT on a CUDA GPU: bf16 full training, QLoRA (4-bit base weights), DeepSpeed ZeRO-2/3, on the tiny model. Skipped without CUDA."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from self_model.config import load_config_file
from self_model.fine_tuning.train_finetune import STAGE, train
from tests.helpers import REPO, script_env, tiny_sft_config, write_yaml

pytestmark = pytest.mark.gpu
SFT_SCRIPT = "self_model/fine_tuning/train_finetune.py"


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


@pytest.mark.parametrize("zero", ["ds_z2_config.json", "ds_z3_config.json"])
def test_deepspeed_zero_configs_train_and_save(tmp_path, zero):
    pytest.importorskip("deepspeed")
    ds_config = REPO / "config" / "self_model_config" / "deepspeed" / zero
    config = tiny_sft_config(tmp_path, eval_before_training=True,
                             training_args={"bf16": True, "max_steps": 20, "deepspeed": str(ds_config)})
    path = write_yaml(tmp_path / "sft.yaml", config)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", SFT_SCRIPT, "--config", str(path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=script_env())
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "out" / "manifest.json").read_text())["metrics"]
    # no evaluation before training under DeepSpeed; the random model starts near ln(1856) = 7.5
    assert "eval_loss_before" not in metrics and "eval_before_training skipped" in result.stdout
    assert metrics["eval_loss"] < 6.5, metrics
    assert (tmp_path / "out" / "model.safetensors").is_file()  # ZeRO-3 gathers the 16-bit weights on save
