"""End-to-end SFT on the tiny model: loss falls, adapters reload exactly, masks hold, run-directory rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from self_model.config import load_config_file
from self_model.fine_tuning.train_finetune import STAGE, train
from self_model.template import IGNORE_INDEX
from tests.helpers import REPO, SFT_TRAIN, TINY_TOKENIZER, run_script, script_env, tiny_sft_config, write_yaml

SFT_SCRIPT = "self_model/fine_tuning/train_finetune.py"


def load(tmp_path, overrides=(), **sections):
    path = write_yaml(tmp_path / "sft.yaml", tiny_sft_config(tmp_path, **sections))
    return load_config_file(STAGE, path, list(overrides))


def probe_batch(tokenizer):
    texts = ["<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n", "计算 12 加 7。"]
    return tokenizer(texts, return_tensors="pt", padding=True)


def test_full_sft_lowers_eval_loss_and_saves_everything(tmp_path):
    train(load(tmp_path, eval_before_training=True, training_args={"max_steps": 30}))
    out = tmp_path / "out"
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    before, after = metrics["eval_loss_before"], metrics["eval_loss"]
    assert after < before - 1.0, (before, after)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "template.json", "config.yaml", "manifest.json",
                 "generation_config.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["fingerprints"][f"{SFT_TRAIN}#96"].startswith("sha256:")
    assert manifest["versions"]["trl"].startswith("1.12")
    generation = json.loads((out / "generation_config.json").read_text())
    assert 2 in ([generation["eos_token_id"]] if isinstance(generation["eos_token_id"], int) else generation["eos_token_id"])


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_adapter_training_and_exact_reload(tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir = tmp_path / "base"
    train(load(tmp_path / "b", training_args={"output_dir": str(base_dir), "max_steps": 2}))
    cfg = load(
        tmp_path,
        model_name_or_path=str(base_dir),
        model={"init_from_config": None},
        peft={"enabled": True, "method": method, "lora_r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
        eval_before_training=True,
    )
    trainer = train(cfg)
    out = tmp_path / "out"
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["eval_loss"] < metrics["eval_loss_before"]
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()

    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = probe_batch(tokenizer)
    trained = trainer.model.eval()
    with torch.no_grad():
        expected = trained(**batch).logits
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out).eval()
    with torch.no_grad():
        actual = reloaded(**batch).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_masked_tokens_get_no_gradient(tmp_path):
    """Logits that predict a -100 label receive exactly zero gradient; trained positions receive some."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from self_model.data.sft import build_sft_data
    from self_model.modeling import load_tokenizer
    from self_model.template import load_renderer

    cfg = load(tmp_path)
    tokenizer = load_tokenizer(cfg)
    data = build_sft_data(cfg.data, tokenizer, load_renderer(cfg, tokenizer, "tiny"), seed=0)
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)([data.train[i] for i in range(4)])
    model = AutoModelForCausalLM.from_config(__import__("transformers").AutoConfig.from_pretrained(cfg.model.init_from_config))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits.retain_grad()
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    loss.backward()
    grad_norm = logits.grad[:, :-1].norm(dim=-1)
    masked = batch["labels"][:, 1:] == IGNORE_INDEX
    assert masked.any() and (~masked).any()
    assert torch.all(grad_norm[masked] == 0)
    assert torch.all(grad_norm[~masked] > 0)


def test_dry_run_writes_preview_and_loads_no_weights(tmp_path, monkeypatch):
    import transformers

    build = transformers.AutoModelForCausalLM.from_config

    def refuse(*args, **kwargs):
        if torch.get_default_device().type == "meta":  # the memory plan counts parameters on the meta device
            return build(*args, **kwargs)
        raise AssertionError("dry run loaded a model")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    cfg = load(tmp_path)
    assert train(cfg, dry_run=True) is None
    rows = [json.loads(line) for line in (tmp_path / "out" / "preview.jsonl").read_text().splitlines()]
    assert len(rows) == 96
    first = rows[0]
    assert set(first) == {"text", "input_ids", "labels"} and len(first["input_ids"]) == len(first["labels"])
    trained = [t for t, label in zip(first["input_ids"], first["labels"]) if label != IGNORE_INDEX]
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(TINY_TOKENIZER).decode(trained).endswith("<|im_end|>")


def test_cli_dry_run_prints_stats(tmp_path):
    path = write_yaml(tmp_path / "sft.yaml", tiny_sft_config(tmp_path))
    result = run_script(SFT_SCRIPT, "--config", str(path), "--dry-run", "data.max_length=40")
    assert result.returncode == 0, result.stderr
    assert "[train] rows read 96" in result.stdout and "truncated" in result.stdout and "trained on" in result.stdout
    assert "⟦" in result.stdout  # trained tokens highlighted
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_refuses_to_overwrite_then_overwrites_when_asked(tmp_path):
    cfg = load(tmp_path, training_args={"max_steps": 1})
    train(cfg)
    weights = (tmp_path / "out" / "model.safetensors").read_bytes()
    path = write_yaml(tmp_path / "again.yaml", tiny_sft_config(tmp_path, training_args={"max_steps": 1}))
    result = run_script(SFT_SCRIPT, "--config", str(path))
    assert result.returncode == 2
    assert "is not empty" in result.stderr and "--resume" in result.stderr and "--overwrite" in result.stderr
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == weights
    train(load(tmp_path, overrides=["overwrite=true", "training_args.seed=1"], training_args={"max_steps": 1}))
    assert (tmp_path / "out" / "model.safetensors").read_bytes() != weights


def test_killed_run_resumes_to_the_same_result(tmp_path):
    from safetensors.torch import load_file

    settings = {"max_steps": 8, "save_strategy": "steps", "save_steps": 4, "logging_steps": 1}
    full = tmp_path / "full"
    train(load(tmp_path / "a", training_args={**settings, "output_dir": str(full)}))
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(full / "checkpoint-4", killed / "checkpoint-4")  # what a run killed after step 4 leaves
    resumed = train(load(tmp_path / "b", overrides=["resume=true"], training_args={**settings, "output_dir": str(killed)}))
    assert resumed.state.global_step == 8
    first_logged = min(e["step"] for e in resumed.state.log_history if "loss" in e and e["step"] > 4)
    assert first_logged == 5
    expected, actual = load_file(full / "model.safetensors"), load_file(killed / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=1e-6)


def test_resume_without_checkpoint_is_refused(tmp_path):
    path = write_yaml(tmp_path / "sft.yaml", tiny_sft_config(tmp_path))
    result = run_script(SFT_SCRIPT, "--config", str(path), "--resume")
    assert result.returncode == 2 and "no checkpoint-* directory" in result.stderr


def test_qlora_on_cpu_says_it_needs_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    config = tiny_sft_config(
        tmp_path, model_name_or_path=str(tmp_path), model={"init_from_config": None}, peft={"enabled": True, "method": "qlora"}
    )
    result = run_script(SFT_SCRIPT, "--config", str(write_yaml(tmp_path / "sft.yaml", config)))
    assert result.returncode == 2 and "qlora needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr


def test_fp16_on_cpu_trains_in_float32(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    path = write_yaml(tmp_path / "sft.yaml", tiny_sft_config(tmp_path, training_args={"fp16": True, "max_steps": 1}))
    result = run_script(SFT_SCRIPT, "--config", str(path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fp16: no GPU here, training in float32" in result.stdout


def test_torchrun_two_processes_share_the_data_and_rank0_writes(tmp_path):
    config = tiny_sft_config(tmp_path, training_args={"max_steps": 6, "per_device_train_batch_size": 4})
    path = write_yaml(tmp_path / "sft.yaml", config)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", SFT_SCRIPT, "--config", str(path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env=script_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("done: ") == 1  # only rank 0 talks
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["processes"] == 2
    # 6 steps x 4 rows x 2 processes = 48 of the 96 rows: the data is sharded, not trained twice
    assert manifest["metrics"]["epoch"] == pytest.approx(0.5)


def test_hub_model_unavailable_offline_says_so(tmp_path):
    config = tiny_sft_config(tmp_path, model_name_or_path="no-such-org/no-such-model", tokenizer_name_or_path=None,
                             model={"init_from_config": None})
    result = run_script(SFT_SCRIPT, "--config", str(write_yaml(tmp_path / "sft.yaml", config)))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "'no-such-org/no-such-model' is not available locally" in result.stderr and "Traceback" not in result.stderr
