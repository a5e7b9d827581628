"""Kill and resume: a run stopped after a checkpoint and started again with --resume ends with the same weights, eval
loss and whole-run train loss as an uninterrupted run, for every single-node stage (CPU, tiny shipped demo configs).

Each stage's uninterrupted run is shared by its tests (module fixture) and saves a checkpoint every 2 of its 6 steps.
Most kill points are the state a SIGKILL leaves between two checkpoints, made by cutting the finished run's directory
back to checkpoint-N (the lock of a dead process, later checkpoints absent, no final model); two are real signals sent
to a subprocess: SIGTERM to SFT (saves, then exits 143) and SIGKILL to CPT, at whatever step it has reached.
SELF_MODEL_RESUME_SWEEP=1 runs 8 steps with a checkpoint after each and tries every one of them as a kill point, in every
stage, instead of the spread below.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from self_model.fine_tuning.train_finetune import main as sft_main
from self_model.pretrain.train_pretrain import main as pretrain_main
from self_model.rlhf.train_dpo import main as dpo_main
from self_model.rlhf.train_grpo import main as grpo_main
from self_model.rlhf.train_rm import main as rm_main
from self_model.runs import LOCK_FILE, checkpoints, is_complete_checkpoint
from tests.helpers import REPO, script_env

SWEEP = os.environ.get("SELF_MODEL_RESUME_SWEEP") == "1"
STEPS, SAVE_EVERY = (8, 1) if SWEEP else (6, 2)
SMALL = ["eval_before_training=false", "training_args.save_strategy=steps", f"training_args.save_steps={SAVE_EVERY}",
         "training_args.logging_steps=1", "training_args.per_device_eval_batch_size=8"]
TRAINER_STEPS = [f"training_args.max_steps={STEPS}", "training_args.per_device_train_batch_size=2",
                 "training_args.warmup_steps=2", "data.max_length=64"]
DATA = "examples/tiny/data"
# fake secrets in the environment, one also read by the config (hub_token); none may be written anywhere
SECRETS = {"WANDB_API_KEY": "wandb-fake-0a1b2c3d", "SWANLAB_API_KEY": "swanlab-fake-4e5f6a7b", "HF_TOKEN": "hf_fakeenv8c9d"}
SFT_DATA = [f"data.train_file={DATA}/sft_train.jsonl#32", f"data.eval_file={DATA}/sft_eval.jsonl#8",
            "trace=[tensorboard,swanlab]", "training_args.hub_token=${oc.env:HF_TOKEN}"]
PAIRS = [f"data.train_file={DATA}/pref_train.jsonl#32", f"data.eval_file={DATA}/pref_eval.jsonl#8"]
STAGES = {  # name -> (entry point, script, demo config, overrides)
    "sft": (sft_main, "self_model/fine_tuning/train_finetune.py", "sft_tiny.yaml", [*TRAINER_STEPS, *SFT_DATA]),
    "sft_lora": (sft_main, "self_model/fine_tuning/train_finetune.py", "sft_tiny.yaml",
                 [*TRAINER_STEPS, *SFT_DATA, "peft.enabled=true", "peft.lora_r=4"]),
    "cpt": (pretrain_main, "self_model/pretrain/train_pretrain.py", "pretrain_tiny.yaml",
            [*TRAINER_STEPS[:3], "data.block_size=32", f"data.train_file={DATA}/corpus.txt#200"]),
    "cpt_streaming": (pretrain_main, "self_model/pretrain/train_pretrain.py", "pretrain_tiny.yaml",
                      [*TRAINER_STEPS[:3], "data.block_size=32", "data.streaming=true", "data.eval_split=0"]),
    "rm": (rm_main, "self_model/rlhf/train_rm.py", "rm_tiny.yaml", [*TRAINER_STEPS, *PAIRS]),
    "dpo": (dpo_main, "self_model/rlhf/train_dpo.py", "dpo_tiny.yaml", [*TRAINER_STEPS, *PAIRS]),
    "grpo_trl": (grpo_main, "self_model/rlhf/train_grpo.py", "grpo_tiny.yaml",
                 [f"rl.total_steps={STEPS}", "rl.prompts_per_step=2", "rl.rollout.n=2", "rl.rollout.max_response_length=8",
                  "rl.actor.ppo_mini_batch_size=2", "rl.actor.ppo_micro_batch_size_per_gpu=4",
                  f"data.train_file={DATA}/rl_prompts.jsonl#16"]),
}
# the kill points the default run tries, spread over the stages; SFT is resumed by the SIGTERM test (after the
# step it reached) and the half-written-checkpoint test (from checkpoint-2), CPT also after a SIGKILL
SPREAD = {"sft": [], "sft_lora": [4], "cpt": [4], "cpt_streaming": [2], "rm": [2], "dpo": [4], "grpo_trl": [4]}
KILL_POINTS = [(stage, step) for stage in STAGES
               for step in (range(SAVE_EVERY, STEPS, SAVE_EVERY) if SWEEP else SPREAD[stage])]
FINAL_FILES = ("model.safetensors", "adapter_model.safetensors")


def command(stage: str, out: Path) -> list[str]:
    _, _, config, overrides = STAGES[stage]
    return ["--config", str(REPO / "config" / "examples" / config), *SMALL, *overrides,
            f"training_args.output_dir={out}"]


def run_stage(stage: str, out: Path, *extra: str) -> dict:
    """Run the stage through its command-line entry point in this process; returns the manifest."""
    assert STAGES[stage][0](command(stage, out) + list(extra)) == 0
    return json.loads((out / "manifest.json").read_text())


def weights(out: Path) -> dict:
    from safetensors.torch import load_file

    name = next(name for name in FINAL_FILES if (out / name).is_file())
    return load_file(out / name)


def assert_same_run(resumed: dict, baseline: dict, out: Path, baseline_out: Path) -> None:
    """Bit-identical weights; eval loss and the whole-run train loss equal up to float summation order (1e-6)."""
    import torch

    first, second = weights(baseline_out), weights(out)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first), "weights differ after resume"
    for key in ("train_loss", "eval_loss"):
        if key in baseline["metrics"]:
            assert resumed["metrics"][key] == pytest.approx(baseline["metrics"][key], rel=1e-6), key
    if "reward_last" in baseline["metrics"]:
        assert resumed["metrics"]["reward_last"] == baseline["metrics"]["reward_last"]


def cut_back_to(source: Path, target: Path, step: int) -> None:
    """The directory a SIGKILL leaves between checkpoint-`step` and the next: later checkpoints and final files gone,
    the dead process's lock left behind."""
    shutil.copytree(source / f"checkpoint-{step}", target / f"checkpoint-{step}")
    for kept in checkpoints(source):
        if int(kept.name.split("-")[1]) < step:
            shutil.copytree(kept, target / kept.name)
    (target / LOCK_FILE).write_text(json.dumps({"pid": dead_pid(), "host": os.uname().nodename, "command": []}))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module", autouse=True)
def fake_secrets():
    saved = {name: os.environ.get(name) for name in SECRETS}
    os.environ.update(SECRETS)
    yield
    for name, value in saved.items():
        os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def assert_no_secret(out: Path, logs: str = "") -> None:
    """No fake secret in any file under output_dir (tracker directories, training_args.bin included) or in the logs."""
    secrets = list(SECRETS.values())
    leaks = [f"{path}: {secret}" for path in out.rglob("*") if path.is_file()
             for secret in secrets if secret.encode() in path.read_bytes()]
    leaks += [f"logs: {secret}" for secret in secrets if secret in logs]
    assert not leaks, leaks


@pytest.fixture(scope="module")
def baselines(tmp_path_factory):
    """Each stage's uninterrupted run, made on first use: stage -> (manifest, output_dir)."""
    made = {}

    def baseline(stage: str):
        if stage not in made:
            out = tmp_path_factory.mktemp(f"baseline_{stage}") / "out"
            made[stage] = run_stage(stage, out), out
        return made[stage]

    return baseline


@pytest.mark.parametrize("stage,step", KILL_POINTS, ids=[f"{stage}-after-{step}" for stage, step in KILL_POINTS])
def test_resume_after_kill_equals_uninterrupted_run(baselines, tmp_path, capsys, stage, step):
    manifest, baseline_out = baselines(stage)
    out = tmp_path / "out"
    cut_back_to(baseline_out, out, step)
    resumed = run_stage(stage, out, "--resume")
    assert "taking over the stale lock" in capsys.readouterr().out
    assert_same_run(resumed, manifest, out, baseline_out)


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_kill_during_the_final_save_resumes_without_another_step(baselines, tmp_path, capsys, stage):
    """Killed after the checkpoint at the last step, while the final model was being saved: nothing is left to
    train (transformers alone runs one more optimizer step from such a checkpoint)."""
    manifest, baseline_out = baselines(stage)
    out = tmp_path / "out"
    cut_back_to(baseline_out, out, STEPS)
    resumed = run_stage(stage, out, "--resume")
    assert f"checkpoint-{STEPS} is at the last step" in capsys.readouterr().out
    assert_same_run(resumed, manifest, out, baseline_out)
    assert [row["step"] for row in map(json.loads, (out / "log_history.jsonl").read_text().splitlines())
            if "loss" in row] == list(range(1, STEPS + 1))


def start_script(stage: str, out: Path, *overrides: str) -> subprocess.Popen:
    _, script, _, _ = STAGES[stage]
    return subprocess.Popen([sys.executable, str(REPO / script), *command(stage, out), *overrides], cwd=REPO,
                            env={**script_env(), **SECRETS},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_checkpoint(process: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (out.is_dir() and any(is_complete_checkpoint(p) for p in checkpoints(out))):
        assert process.poll() is None, f"the run ended before its first checkpoint:\n{process.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)


def test_sigterm_saves_exits_and_resumes_to_the_same_result(baselines, tmp_path):
    manifest, baseline_out = baselines("sft")
    out = tmp_path / "out"
    process = start_script("sft", out)
    wait_for_checkpoint(process, out)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    seconds = time.monotonic() - sent
    assert process.returncode == 128 + signal.SIGTERM, output
    assert "Traceback" not in output
    assert "SIGTERM received" in output and "Continue with:" in output and "--resume" in output, output
    assert seconds < 30, f"{seconds:.1f} s from SIGTERM to exit"  # the step, a checkpoint, closing the trackers
    assert not (out / "manifest.json").exists() and not (out / LOCK_FILE).exists()
    assert_same_run(run_stage("sft", out, "--resume"), manifest, out, baseline_out)
    assert_no_secret(out, output)
    assert list((out / "swanlog").iterdir()) and list((out / "runs").rglob("events.out.tfevents.*"))


def test_sigkill_at_a_random_step_resumes_to_the_same_result(baselines, tmp_path):
    manifest, baseline_out = baselines("cpt")
    out = tmp_path / "out"
    # a checkpoint after every step: the tiny run is slow enough to be caught, and the kill may land mid-save
    process = start_script("cpt", out, "training_args.save_steps=1")
    wait_for_checkpoint(process, out)
    time.sleep(0.02 * (os.getpid() % 4))  # somewhere in the steps after the first checkpoint
    assert process.poll() is None, "the run ended before the kill: the test needs more steps after a checkpoint"
    process.kill()
    output, _ = process.communicate()
    assert_no_secret(out, output)
    assert (out / LOCK_FILE).exists()  # a SIGKILL leaves its lock: the resume takes it over
    assert_same_run(run_stage("cpt", out, "--resume"), manifest, out, baseline_out)


def test_half_written_checkpoint_and_final_save_are_ignored(baselines, tmp_path, capsys):
    """A kill while checkpoint-4 or the final model was being written: resume from checkpoint-2, same result."""
    manifest, baseline_out = baselines("sft")
    out = tmp_path / "out"
    cut_back_to(baseline_out, out, 4)
    state = out / "checkpoint-4" / "trainer_state.json"
    state.write_text(state.read_text()[:100])  # trainer_state.json is written last: cut short, the rest is there
    (out / ".saving").mkdir()
    (out / ".saving" / "model.safetensors").write_bytes(b"half")
    resumed = run_stage("sft", out, "--resume")
    said = capsys.readouterr().out
    assert "removing" in said and "checkpoint-4: written only in part" in said
    assert "discarding" in said and ".saving" in said
    assert_same_run(resumed, manifest, out, baseline_out)


@pytest.mark.parametrize("stage", list(STAGES))
def test_no_secret_is_written(baselines, stage):
    _, out = baselines(stage)
    assert_no_secret(out)
