"""Runs that fail safely: one writer per output_dir, numerical faults, signals, disk space, the final save, secrets,
data files from other editors, and command lines in any order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerControl, TrainerState

from self_model.config import load_config, load_config_file, redact
from self_model.data.sources import BadRowLog, read_source
from self_model.errors import ConfigError, UserError
from self_model.fine_tuning.train_finetune import STAGE, main
from self_model.guards import RunGuard
from self_model.runs import LOCK_FILE, RunDir, finish_interrupted_save
from tests.helpers import REPO, tiny_sft_config, write_yaml


def sft_config(tmp_path, **training_args) -> Path:
    config = tiny_sft_config(tmp_path)
    config["data"] = {**config["data"], "train_file": f"{config['data']['train_file'].split('#')[0]}#24",
                      "eval_file": None, "max_length": 64}
    config["training_args"].update({"per_device_train_batch_size": 4, "max_steps": 6, "logging_steps": 1,
                                    **training_args})
    return write_yaml(tmp_path / "config.yaml", config)


# ---------------------------------------------------------------- one writer


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    cfg = load_config_file(STAGE, sft_config(tmp_path))
    out = Path(cfg.output_dir)
    out.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(json.dumps({"pid": other.pid, "host": os.uname().nodename,
                                                 "started_at": "2026-12-02T10:00:00+00:00",
                                                 "command": ["train_finetune.py", "--config", "a.yaml"]}))
        with pytest.raises(UserError, match=rf"output_dir {out} is in use by process {other.pid} \(started "
                                            r"2026-12-02T10:00:00\+00:00: train_finetune.py --config a.yaml\)"):
            RunDir.prepare(cfg)
    finally:
        other.kill()
        other.wait()
    RunDir.prepare(cfg)
    assert f"taking over the stale lock of process {other.pid}" in capsys.readouterr().out
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()


# ---------------------------------------------------------------- numerical faults


def test_nan_gradients_stop_the_run_naming_step_and_checkpoint(tmp_path, capsys):
    path = sft_config(tmp_path, learning_rate=1e30, save_strategy="steps", save_steps=1)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "non-finite gradient norm at step 2: training stopped before the update" in err, err
    assert f"the last good checkpoint is {tmp_path / 'out' / 'checkpoint-1'} (continue with --resume)" in err


def test_skip_step_skips_the_update_and_counts_it(tmp_path):
    from safetensors.torch import load_file

    main(["--config", str(sft_config(tmp_path, learning_rate=1e30)), "numerics=skip_step"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["metrics"]["skipped_steps"] == [2, 3, 4, 5, 6]
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())  # no NaN update was applied


# ---------------------------------------------------------------- signals and disk


def test_a_signal_asks_for_a_checkpoint_and_a_stop(tmp_path):
    guard = RunGuard(trainer=None, numerics="stop", loss_sum_before=0.0)
    guard.trainer = SimpleNamespace(_total_loss_scalar=3.0, _tr_loss=torch.tensor(0.5))
    previous = signal.getsignal(signal.SIGINT)
    guard.install()
    try:
        signal.signal(signal.SIGINT, lambda *_: None)  # a tracker takes SIGINT when its run starts (swanlab does)
        guard.on_train_begin(SimpleNamespace(save_only_model=False), TrainerState(), TrainerControl(),
                             model=torch.nn.Linear(2, 2))
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the handler records it
        assert guard.stop_signal == signal.SIGINT
    finally:
        guard.uninstall()
    assert signal.getsignal(signal.SIGINT) is previous
    state, control = TrainerState(global_step=7), TrainerControl()
    guard.on_step_end(SimpleNamespace(output_dir=str(tmp_path), world_size=1), state, control)
    assert control.should_save and control.should_training_stop
    assert state.stateful_callbacks["self_model"] == {"train_loss_sum": 3.5}


def test_no_checkpoint_without_room_on_the_disk(tmp_path, monkeypatch):
    guard = RunGuard(trainer=None, numerics="stop", loss_sum_before=0.0)
    model = torch.nn.Linear(1024, 1024)
    guard.on_train_begin(SimpleNamespace(save_only_model=False), TrainerState(), TrainerControl(), model=model)
    assert guard._checkpoint_bytes == (1024 * 1024 + 1024) * (4 + 8)  # fp32 weights, AdamW's two moments
    monkeypatch.setattr("shutil.disk_usage", lambda path: SimpleNamespace(free=2**20))
    control = TrainerControl(should_save=True)
    with pytest.raises(UserError, match=r"not enough disk space for checkpoint-5 in .*: it needs about 0\.01 GiB and "
                                        r"0\.00 GiB are free"):
        guard.on_step_end(SimpleNamespace(output_dir=str(tmp_path), world_size=1), TrainerState(global_step=5), control)


# ---------------------------------------------------------------- the final save


def test_a_staged_final_save_is_completed_or_discarded(tmp_path, capsys):
    staging = tmp_path / ".saving"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"weights")
    finish_interrupted_save(tmp_path)  # no manifest staged: the save never finished
    assert not staging.exists() and not (tmp_path / "model.safetensors").exists()
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"weights")
    (staging / "manifest.json").write_text("{}")
    finish_interrupted_save(tmp_path)  # everything staged: only the moves were left
    assert (tmp_path / "model.safetensors").read_bytes() == b"weights" and (tmp_path / "manifest.json").exists()
    assert "discarding" in capsys.readouterr().out


# ---------------------------------------------------------------- safe by default


def test_shipped_configs_never_overwrite():
    offenders = [str(p) for p in (REPO / "config").rglob("*.yaml") if "overwrite: true" in p.read_text()]
    assert not offenders


def test_run_numbered_output_dirs(tmp_path, capsys):
    path = sft_config(tmp_path)
    template = str(tmp_path / "runs" / "{run}")
    for expected in ("1", "2"):
        cfg = load_config_file(STAGE, path, [f"training_args.output_dir={template}"])
        run = RunDir.prepare(cfg)
        assert run.path == tmp_path / "runs" / expected and cfg.output_dir == str(run.path)
        (run.path / "checkpoint-1").mkdir()
        (run.path / "checkpoint-1" / "trainer_state.json").write_text("{}")
    resumed = RunDir.prepare(load_config_file(STAGE, path, [f"training_args.output_dir={template}", "resume=true"]))
    assert resumed.path == tmp_path / "runs" / "2" and resumed.resume_checkpoint.endswith("2/checkpoint-1")
    assert f"output_dir: {tmp_path / 'runs' / '2'}" in capsys.readouterr().out


def test_flags_and_overrides_in_any_order(tmp_path):
    path = str(sft_config(tmp_path))
    orders = [["--config", path, "--resume", "training_args.seed=3", "--dry-run", "peft.lora_r=4"],
              ["training_args.seed=3", "--resume", "peft.lora_r=4", "--config", path, "--dry-run"],
              ["--dry-run", "peft.lora_r=4", "--config", path, "training_args.seed=3", "--resume"]]
    for argv in orders:
        cfg, args = load_config(STAGE, argv)
        assert (cfg.resume, cfg.training_args["seed"], cfg.peft.lora_r, args.dry_run) == (True, 3, 4, True)


# ---------------------------------------------------------------- secrets


def test_redaction_matches_secret_keys_exactly():
    config = {"tokenizer_name_or_path": "examples/tiny/tokenizer", "template": {"eos_token": "<|im_end|>"},
              "training_args": {"hub_token": "hf_abc", "max_tokens": 3},
              "rl": {"reward": {"api_key": "sk-1", "judge_api_key": "sk-2", "endpoint": "http://x"}}}
    assert redact(config) == {"tokenizer_name_or_path": "examples/tiny/tokenizer",
                              "template": {"eos_token": "<|im_end|>"}, "training_args": {"max_tokens": 3},
                              "rl": {"reward": {"endpoint": "http://x"}}}
    with pytest.raises(ConfigError, match=r"training_args.hub_token: a secret on the command line is seen by other "
                                          r"users \(ps\), kept in the shell's history and recorded by trackers"):
        load_config(STAGE, ["--config", str(REPO / "config" / "examples" / "sft_tiny.yaml"), "training_args.hub_token=hf_x"])


# ---------------------------------------------------------------- data from other editors


def test_a_byte_order_mark_is_accepted(tmp_path):
    row = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + (json.dumps(row) + "\n").encode() * 2)
    csv = tmp_path / "bom.csv"
    csv.write_bytes(b"\xef\xbb\xbfprompt,response\nHi,Hello.\n")
    text = tmp_path / "bom.txt"
    text.write_bytes(b"\xef\xbb\xbfFirst line.\nSecond line.\n")
    assert [r.data for r in read_source(str(jsonl), BadRowLog("fail"))] == [row, row]
    assert [r.data for r in read_source(str(csv), BadRowLog("fail"))] == [{"prompt": "Hi", "response": "Hello."}]
    assert [r.data["text"] for r in read_source(str(text), BadRowLog("fail"))] == ["First line.", "Second line."]
