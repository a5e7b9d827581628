"""The memory plan's arithmetic, the checkpointing decision it makes, and the speed keys' rules."""

from __future__ import annotations

import dataclasses

import pytest

from self_model import memory
from self_model.config import load_config_file
from self_model.errors import ConfigError, UserError
from self_model.fine_tuning.train_finetune import STAGE as SFT_STAGE
from tests.helpers import tiny_sft_config, write_yaml

GIB = memory.GIB
# Qwen2.5-0.5B: hidden 896, 24 layers, 14 heads of 64 (2 KV heads), intermediate 4864, vocab 151936, tied
QWEN_05B = memory.Shape(params=494_032_768, embedding_params=136_134_656, hidden=896, intermediate=4864, layers=24,
                        kv_dim=128, vocab=151_936, adapter_params=0, adapted_inputs=0, dtype="bfloat16")


def cfg(tmp_path, **sections):
    return load_config_file(SFT_STAGE, write_yaml(tmp_path / "c.yaml", tiny_sft_config(tmp_path, **sections)))


def rows(plan: memory.MemoryPlan) -> dict[str, float]:
    return {name: size for name, size, _ in plan.rows}


def test_full_training_counts_weights_gradients_adam_and_activations(tmp_path):
    work = memory.Workload(tokens=32_768, trained_tokens=32_768, chunked_loss=True)
    plan = memory.plan(cfg(tmp_path), QWEN_05B, work, "bfloat16", liger=False, device_bytes=140 * GIB,
                       checkpointing="auto")
    parts = rows(plan)
    assert parts["weights"] == parts["gradients"] == QWEN_05B.params * 2
    assert parts["AdamW states"] == QWEN_05B.params * 4
    per_token = memory.activation_bytes_per_token(QWEN_05B, liger=False, lora_dropout=False)
    assert parts["activations"] == pytest.approx(32_768 * 24 * per_token, rel=0.02)  # plus embeddings and the head
    assert parts["logits"] == memory.CHUNKED_LOSS_TOKENS * 151_936 * 12
    assert plan.checkpointing is False and plan.total == pytest.approx(sum(parts.values()))


def test_liger_shrinks_activations_and_removes_the_logits(tmp_path):
    work = memory.Workload(tokens=32_768, trained_tokens=32_768)
    plain = rows(memory.plan(cfg(tmp_path), QWEN_05B, work, "bfloat16", False, None, "auto"))
    fused = rows(memory.plan(cfg(tmp_path), QWEN_05B, work, "bfloat16", True, None, "auto"))
    assert fused["activations"] < 0.75 * plain["activations"]
    assert plain["logits"] == 32_768 * 151_936 * 12 and fused["logits"] < plain["logits"] / 100


def test_checkpointing_turns_on_only_when_the_run_would_not_fit(tmp_path):
    work = memory.Workload(tokens=32_768, trained_tokens=32_768)
    config = cfg(tmp_path)
    roomy = memory.plan(config, QWEN_05B, work, "bfloat16", False, 140 * GIB, "auto")
    tight = memory.plan(config, QWEN_05B, work, "bfloat16", False, 24 * GIB, "auto")
    assert not roomy.checkpointing and tight.checkpointing
    assert rows(tight)["activations"] < rows(roomy)["activations"] / 10  # only each layer's input is kept
    assert tight.needed_without == pytest.approx(roomy.total)
    forced = memory.plan(config, QWEN_05B, work, "bfloat16", False, 140 * GIB, True)
    assert forced.checkpointing and rows(forced)["activations"] == rows(tight)["activations"]


def test_lora_and_qlora_keep_the_base_frozen(tmp_path):
    shape = dataclasses.replace(QWEN_05B, adapter_params=8_798_208, adapted_inputs=6 * 896 + 4864)
    work = memory.Workload(tokens=8192, trained_tokens=8192)
    lora = rows(memory.plan(cfg(tmp_path, peft={"enabled": True}), shape, work, "bfloat16", False, None, "auto"))
    assert "gradients" not in lora and lora["adapters + grads + AdamW"] == 8_798_208 * 16
    assert lora["weights"] == QWEN_05B.params * 2
    qlora_cfg = cfg(tmp_path, peft={"enabled": True, "method": "qlora"}, model_name_or_path="x/y",
                    model={"init_from_config": None})
    qlora = rows(memory.plan(qlora_cfg, shape, work, "bfloat16", False, None, "auto"))
    assert qlora["weights"] < lora["weights"] / 2  # 0.5B: a quarter of the weights are (16-bit) embeddings


def test_reference_copy_and_score_head(tmp_path):
    config = cfg(tmp_path)
    dpo = rows(memory.plan(config, QWEN_05B, memory.Workload(4096, 4096, reference_copy=True), "bfloat16", True, None,
                           "auto"))
    assert dpo["reference model"] == QWEN_05B.params * 2
    reward = rows(memory.plan(config, QWEN_05B, memory.Workload(4096, 0, lm_head=False), "bfloat16", False, None, "auto"))
    assert "logits" not in reward


def test_the_plan_reads_the_tiny_models_shape(tmp_path):
    shape = memory.model_shape(cfg(tmp_path, peft={"enabled": True, "target_modules": ["q_proj", "v_proj"]}))
    assert shape.hidden == 64 and shape.layers == 2 and shape.vocab == 1856 and shape.dtype == "float32"
    assert shape.adapter_params == 2 * 8 * ((64 + 64) + (64 + 32))  # two layers, r 8: q (64->64), v (64->32)
    assert shape.adapted_inputs == 64 + 64


@pytest.mark.parametrize("sections, expected", [
    ({"training_args": {"gradient_checkpointing": True}}, "use `model.gradient_checkpointing` instead"),
    ({"model": {"gradient_checkpointing": "sometimes"}}, "model.gradient_checkpointing: expected"),
    ({"training_args": {"padding_free": True}}, "training_args.padding_free: set by this project: use `data.packing`"),
    ({"training_args": {"packing_strategy": "wrapped"}}, "lets them attend to each other"),
    ({"model": {"attn_implementation": "flash"}}, "must be one of 'auto', 'varlen'"),
    ({"data": {"packing": "sometimes"}}, "data.packing: expected"),
])
def test_speed_keys_refused_with_the_right_message(tmp_path, sections, expected):
    with pytest.raises(ConfigError, match=expected):
        cfg(tmp_path, **sections)


def test_out_of_memory_is_answered_with_what_to_change(tmp_path, monkeypatch):
    import torch

    from self_model.fine_tuning import train_finetune

    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("trl.SFTTrainer.train", out_of_memory)
    with pytest.raises(UserError, match=r"ran out of memory at step 0.*per_device_train_batch_size \(8; raise "
                                        r"gradient_accumulation_steps.*model.gradient_checkpointing: true"):
        train_finetune.train(cfg(tmp_path))


def test_dry_run_prints_the_plan_and_the_manifest_records_it(tmp_path, capsys):
    import json

    from self_model.fine_tuning import train_finetune

    train_finetune.train(cfg(tmp_path), dry_run=True)
    assert "memory plan (estimate" in capsys.readouterr().out
    train_finetune.train(cfg(tmp_path, training_args={"max_steps": 2}))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["memory_plan"]["gradient_checkpointing"] is False and manifest["memory_plan"]["total_gib"] > 0
