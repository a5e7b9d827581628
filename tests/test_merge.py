"""merge_lora: the merged model computes what base + adapter computes, carries tokenizer, template, stop tokens and
lineage, trains as a stage's model_name_or_path, and bad input gets one message with exit code 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from self_model.merge_lora import main as merge_main
from tests.helpers import SFT_EVAL, SFT_TRAIN, tiny_sft_config, write_yaml

PROBE = ["<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n", "计算 12 加 7。"]


def logits(model, tokenizer):
    batch = tokenizer(PROBE, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def merge_fails(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        merge_main(list(argv))
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_logits_equal_base_plus_adapter(tiny_outputs, tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter, base, merged = tiny_outputs[method], tiny_outputs["base"], tmp_path / "merged"
    assert merge_main(["--adapter", str(adapter), "--output_dir", str(merged)]) == 0  # base found from the manifest

    tokenizer = AutoTokenizer.from_pretrained(merged)
    expected = logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval(), tokenizer)
    actual = logits(AutoModelForCausalLM.from_pretrained(merged).eval(), tokenizer)
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-4)  # float32 rounding of W + BA on wide logits
    base_only = logits(AutoModelForCausalLM.from_pretrained(base).eval(), tokenizer)
    assert (actual - base_only).abs().max() > 1e-2  # the adapter changed the model, so equality above means something

    assert not (merged / "adapter_config.json").exists()
    assert json.loads((merged / "template.json").read_text())["name"] == "qwen2_chatml"
    manifest = json.loads((merged / "manifest.json").read_text())
    assert manifest["stage"] == "merge" and manifest["parents"] == {"adapter": str(adapter), "base": str(base)}
    eos = json.loads((merged / "generation_config.json").read_text())["eos_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])


def test_merged_model_is_a_stage_starting_point(tiny_outputs, tmp_path):
    from self_model.config import load_config_file
    from self_model.fine_tuning.train_finetune import STAGE, train

    merged = tmp_path / "merged"
    merge_main(["--adapter", str(tiny_outputs["lora"]), "--output_dir", str(merged), "--dtype", "fp32"])
    config = tiny_sft_config(tmp_path, model_name_or_path=str(merged), tokenizer_name_or_path=None,
                             model={"init_from_config": None}, data={"train_file": f"{SFT_TRAIN}#8", "eval_file": None},
                             training_args={"max_steps": 1})
    train(load_config_file(STAGE, write_yaml(tmp_path / "sft.yaml", config)))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model_name_or_path"] == str(merged) and manifest["metrics"]["train_loss"] > 0


def test_merged_model_calibrates_on_its_adapters_eval_data(tiny_outputs, tmp_path):
    """quantize's default calibration data for a merged model is the eval file its adapter's run trained with."""
    import yaml

    from self_model.outputs import OutputDir
    from self_model.quantize import calibration_file

    adapter, merged = tmp_path / "lora", tmp_path / "merged"
    shutil.copytree(tiny_outputs["lora"], adapter)
    config = yaml.safe_load((adapter / "config.yaml").read_text())
    config["data"]["eval_file"] = str(SFT_EVAL)
    (adapter / "config.yaml").write_text(yaml.safe_dump(config))
    merge_main(["--adapter", str(adapter), "--output_dir", str(merged)])
    assert calibration_file(OutputDir.open(str(merged)), None) == str(SFT_EVAL)


def test_bad_inputs_get_one_message(tiny_outputs, tmp_path, capsys):
    lora, base = str(tiny_outputs["lora"]), str(tiny_outputs["base"])
    out = str(tmp_path / "merged")
    assert "is a full model, not an adapter" in merge_fails(capsys, "--adapter", base, "--output_dir", out)
    assert "neither a model directory" in merge_fails(capsys, "--adapter", str(tmp_path), "--output_dir", out)
    message = merge_fails(capsys, "--adapter", lora, "--base", str(tmp_path / "gone"), "--output_dir", out)
    assert "its base model" in message and "is not found; pass --base PATH" in message

    quantized = tmp_path / "base_4bit"
    shutil.copytree(base, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    assert "bitsandbytes-quantized" in merge_fails(capsys, "--adapter", lora, "--base", str(quantized), "--output_dir", out)

    (tmp_path / "merged").mkdir()
    (tmp_path / "merged" / "keep.txt").write_text("x")
    assert "is not empty; pass --overwrite" in merge_fails(capsys, "--adapter", lora, "--output_dir", out)
    assert "invalid choice" in merge_fails(capsys, "--adapter", lora, "--output_dir", out, "--dtype", "int3")
