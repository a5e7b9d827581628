"""Every `peft` key either reaches the trainer's adapter config or is refused, on each backend (TRL and verl)."""

from __future__ import annotations

import dataclasses

import pytest

from self_model.config import PeftArgs
from self_model.errors import ConfigError, UserError
from self_model.modeling import build_peft_config, check_environment
from self_model.rlhf import verl_backend
from tests.helpers import TINY, tiny_sft_config, write_yaml
from tests.test_rl import GRPO_STAGE, load

# a value for each field that differs from its default, and where it lands in peft's LoraConfig
TRL_LANDS = {
    "enabled": (True, None),
    "method": ("dora", ("use_dora", True)),
    "lora_r": (12, ("r", 12)),
    "lora_alpha": (24, ("lora_alpha", 24)),
    "lora_dropout": (0.1, ("lora_dropout", 0.1)),
    "target_modules": (["q_proj", "v_proj"], ("target_modules", {"q_proj", "v_proj"})),
    "exclude_modules": (["lm_head"], ("exclude_modules", {"lm_head"})),
    "modules_to_save": (["lm_head"], ("modules_to_save", ["lm_head"])),
}
# the same for verl: a key of actor_rollout_ref.model, or the message that refuses it
VERL_LANDS = {
    "enabled": (True, None),
    "method": ("dora", "verl trains plain LoRA only, not dora"),
    "lora_r": (12, ("lora_rank", 12)),
    "lora_alpha": (24, ("lora_alpha", 24)),
    "lora_dropout": (0.1, "verl's LoRA has no dropout"),
    "target_modules": (["q_proj", "v_proj"], ("target_modules", ["q_proj", "v_proj"])),
    "exclude_modules": (["lm_head"], ("exclude_modules", ["lm_head"])),
    "modules_to_save": (["lm_head"], "verl cannot train whole modules beside the adapter"),
}


def test_every_peft_field_is_covered():
    names = {f.name for f in dataclasses.fields(PeftArgs)}
    assert names == set(TRL_LANDS) == set(VERL_LANDS), "a new peft field must reach each backend or be refused there"


@pytest.mark.parametrize("name", sorted(TRL_LANDS))
def test_peft_field_reaches_trl_lora_config(tmp_path, name):
    from self_model.config import load_config_file
    from self_model.fine_tuning.train_finetune import STAGE

    value, (attribute, expected) = TRL_LANDS[name][0], TRL_LANDS[name][1] or ("r", 8)
    peft = {"enabled": True, name: value}
    cfg = load_config_file(STAGE, write_yaml(tmp_path / "c.yaml", tiny_sft_config(tmp_path, peft=peft)))
    lora = build_peft_config(cfg)
    got = getattr(lora, attribute)
    assert (set(got) if isinstance(got, (set, list)) and isinstance(expected, set) else got) == expected


def test_qlora_is_refused_without_a_gpu_and_quantizes_with_one(tmp_path):
    import torch

    from self_model.config import load_config_file
    from self_model.fine_tuning.train_finetune import STAGE

    config = tiny_sft_config(tmp_path, peft={"enabled": True, "method": "qlora"}, model_name_or_path=str(TINY),
                             model={"init_from_config": None})
    cfg = load_config_file(STAGE, write_yaml(tmp_path / "c.yaml", config))
    if torch.cuda.is_available():
        pytest.skip("refusal is for machines without CUDA; tests/test_sft_gpu.py trains QLoRA")
    with pytest.raises(UserError, match="qlora needs a CUDA GPU"):
        check_environment(cfg, {})


@pytest.mark.parametrize("name", sorted(VERL_LANDS))
def test_peft_field_reaches_verl_or_is_refused(tmp_path, name):
    value, lands = VERL_LANDS[name]
    peft = {"enabled": True, name: value}
    if isinstance(lands, str):
        with pytest.raises(ConfigError, match=lands.replace("(", r"\(")):
            load(GRPO_STAGE, tmp_path, peft=peft)
        return
    cfg = load(GRPO_STAGE, tmp_path, peft=peft)
    values = verl_backend.verl_values(cfg, "grpo", "model", {"train": "train.parquet"}, None)
    key, expected = lands or ("lora_rank", 8)
    assert values[f"actor_rollout_ref.model.{key}"] == expected
    assert values["actor_rollout_ref.rollout.load_format"] == "auto"  # vLLM loads the base, syncs the adapter
    assert values["actor_rollout_ref.actor.strategy"] == "fsdp2"  # under FSDP1 verl collects an empty adapter


def test_verl_takes_unset_dropout_default_and_explicit_zero(tmp_path):
    load(GRPO_STAGE, tmp_path, peft={"enabled": True})  # the default 0.05 is not the user's: accepted
    load(GRPO_STAGE, tmp_path, peft={"enabled": True, "lora_dropout": 0.0})  # what verl does anyway


def test_verl_without_peft_trains_all_weights(tmp_path):
    cfg = load(GRPO_STAGE, tmp_path)
    values = verl_backend.verl_values(cfg, "grpo", "model", {"train": "train.parquet"}, None)
    assert not any(key.startswith("actor_rollout_ref.model.lora") for key in values)
    assert "actor_rollout_ref.rollout.load_format" not in values
    assert "actor_rollout_ref.actor.strategy" not in values



# verl's LoRA sync: the actor's adapter tensors as verl collects them for vLLM, under the FSDP our config picks
COLLECT_ADAPTER = """
import json, os, sys
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM
from verl.utils.fsdp_utils import collect_lora_params
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo")
model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**json.load(open(sys.argv[1]))))
model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
mesh = init_device_mesh("cpu", (1,))
for layer in model.base_model.model.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
expected = sum("lora_" in name for name, _ in model.named_parameters())
print(len(collect_lora_params(model, layered_summon=False, base_sync_done=True)), expected)
"""


def test_verl_lora_actor_sends_vllm_the_whole_adapter(tmp_path):
    import socket
    import subprocess
    import sys

    from tests.helpers import TINY_MODEL_CONFIG

    cfg = load(GRPO_STAGE, tmp_path, peft={"enabled": True})
    assert verl_backend.verl_values(cfg, "grpo", "model", {"train": "t"}, None)["actor_rollout_ref.actor.strategy"] == "fsdp2"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    out = subprocess.run([sys.executable, "-c", COLLECT_ADAPTER, str(TINY_MODEL_CONFIG), port], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    collected, expected = map(int, out.stdout.split()[-2:])
    assert collected == expected > 0


def test_verl_lora_export_is_the_merged_policy_beside_its_adapter(tmp_path):
    import json
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from self_model.modeling import load_saved_tokenizer
    from self_model.outputs import OutputDir
    from tests.helpers import random_model_dir

    base = random_model_dir(tmp_path / "base")
    exported = tmp_path / "out" / "hf_model"
    shutil.copytree(base, exported)  # what verl's merger writes: the base's weights, and the adapter inside
    trained = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                             LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)).eval()
    trained.save_pretrained(exported / "lora_adapter")
    config_file = exported / "lora_adapter" / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": None}))
    tokenizer, peft = load_saved_tokenizer(str(base)), PeftArgs(enabled=True, lora_r=4, lora_alpha=8)
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "lora_alpha": 0}))  # verl lost it
    with pytest.raises(UserError, match="lora_alpha 0; the run trained r 4, lora_alpha 8"):
        verl_backend.split_lora_export(exported, str(base), tmp_path / "out" / "lora_adapter", tokenizer, peft)
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "lora_alpha": 8}))
    adapter = verl_backend.split_lora_export(exported, str(base), tmp_path / "out" / "lora_adapter", tokenizer, peft)
    ids = torch.arange(1, 17)[None]

    def logits(path: str):
        output = OutputDir.open(path)
        return output, output.load_model(output.load_tokenizer(), dtype="fp32", device="cpu")(ids).logits

    with torch.inference_mode():
        expected = trained(ids).logits
        with trained.disable_adapter():
            untrained = trained(ids).logits
        policy, merged = logits(str(exported))
        reopened, with_adapter = logits(str(adapter))
    assert (expected - untrained).abs().max() > 1e-2  # the adapter changes the model
    assert not policy.is_adapter and (merged - expected).abs().max() < 1e-4
    assert reopened.base == str(base.resolve()) and (with_adapter - expected).abs().max() < 1e-5
    assert not (exported / "lora_adapter").exists()
