"""The config loader: every shipped YAML loads; each bad config fails with one clear message and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from data_process.settings import load_process_settings
from self_model.config import StageSpec, import_class, load_config_file, training_arg_types
from self_model.distill.train_gkd import STAGE as GKD_STAGE
from self_model.errors import ConfigError
from self_model.evaluate import load_eval_config
from self_model.fine_tuning.train_embedding import STAGE as EMBEDDING_STAGE
from self_model.fine_tuning.train_finetune import STAGE as SFT_STAGE
from self_model.fine_tuning.train_seq_cls import STAGE as SEQ_CLS_STAGE
from self_model.pretrain.train_pretrain import STAGE as PRETRAIN_STAGE
from self_model.rlhf.train_dpo import STAGE as DPO_STAGE
from self_model.rlhf.train_dpo import TRAINERS
from self_model.rlhf.train_grpo import STAGE as GRPO_STAGE
from self_model.rlhf.train_ppo import STAGE as PPO_STAGE
from self_model.rlhf.train_rm import STAGE as RM_STAGE
from self_model.tracking import ENV_KEYS, load_settings
from tests.helpers import REPO, SFT_TRAIN, TINY_MODEL_CONFIG, TINY_TOKENIZER, run_script, write_yaml

STAGE_BY_PREFIX = {"finetune": SFT_STAGE, "sft": SFT_STAGE, "pretrain": PRETRAIN_STAGE, "rm": RM_STAGE, "dpo": DPO_STAGE, "grpo": GRPO_STAGE,
                   "ppo": PPO_STAGE, "gkd": GKD_STAGE, "seq_cls": SEQ_CLS_STAGE, "embedding": EMBEDDING_STAGE,
                   "rlhf": DPO_STAGE}  # rlhf.yaml: the RL stages read it too (test_aliases.py)
SFT_SCRIPT = "self_model/fine_tuning/train_finetune.py"


def stage_for(path: Path) -> StageSpec:
    for prefix, stage in STAGE_BY_PREFIX.items():
        if path.stem.startswith(prefix):
            return stage
    raise AssertionError(f"{path}: no stage known for this config name; add it to STAGE_BY_PREFIX")


def test_every_shipped_config_loads(tmp_path):
    """Every YAML/JSON under config/ (subfolders too) parses and passes its schema; all failures at once."""
    failures = []
    # gkd_tiny's teacher is the output of an earlier README command: it stands in, so the check does not depend on
    # whether checkpoints/ exists here
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    stand_ins = {"gkd_tiny": [f"gkd.teacher={teacher}"]}
    files = sorted(p for p in (REPO / "config").rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    assert files
    for path in files:
        rel = path.relative_to(REPO)
        try:
            if rel.parts[1] in ("self_model_config", "examples") and rel.parts[2:3] not in (("deepspeed",), ("accelerate",)):
                # Files named in shipped configs (e.g. data_process outputs) need not exist yet.
                load_config_file(stage_for(path), path, stand_ins.get(path.stem, []), check_files=rel.parts[1] == "examples")
            elif rel.parts[1] == "eval" and rel.parts[2] != "lm_eval_tasks":
                load_eval_config(str(path), check_files=False)  # e.g. GSM8K, fetched by the user first
            elif rel.parts[1] == "pipeline":
                from self_model.pipeline import load_pipeline

                load_pipeline(str(path))  # stages, keys, references, outputs (each step's config: test_run_pipeline.py)
            elif rel.parts[1] == "data_config":
                load_process_settings(str(path), check_files=False)  # inputs are what fetch_dataset.py writes
            elif rel.parts[1] == "trace_config":
                assert path.stem in ENV_KEYS, f"unknown tracker {path.stem}"
                load_settings(path.stem, path.parent)
            elif "deepspeed" in rel.parts:
                assert "zero_optimization" in json.loads(path.read_text())
            elif "accelerate" in rel.parts:
                from accelerate.commands.config.config_args import ClusterConfig

                ClusterConfig.from_yaml_file(path)
            else:
                yaml.safe_load(path.read_text())
        except Exception as err:  # collect every failure, report once
            failures.append(f"{rel}: {err}")
    assert not failures, "\n".join(failures)


USER_CONFIG = """
model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct
tokenizer_name_or_path: Qwen/Qwen2.5-0.5B-Instruct
template_path: self_model/template/qwen2_chatml.json
data:
  train_file: data_process/final_data/finetune/train.jsonl
  eval_file: data_process/final_data/finetune/validation.jsonl
  max_length: 512
peft:
  enabled: true
  lora_r: 8
  lora_alpha: 16
  target_modules: [q_proj, k_proj, v_proj, o_proj]
trace: swanlab  # wandb/swanlab/none
training_args:
  output_dir: self_model/checkpoints/finetune
  per_device_train_batch_size: 2
  gradient_accumulation_steps: 4
  learning_rate: 5.0e-5
  num_train_epochs: 1
  fp16: true
"""


def test_users_own_config_loads_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("train.jsonl", "validation.jsonl"):
        target = tmp_path / "data_process/final_data/finetune" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(SFT_TRAIN.read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "finetune.yaml").write_text(USER_CONFIG)
    cfg = load_config_file(SFT_STAGE, tmp_path / "finetune.yaml")
    assert cfg.peft.enabled and cfg.peft.lora_r == 8 and cfg.peft.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.trace == ["swanlab"]
    assert cfg.training_args["learning_rate"] == 5e-5 and cfg.training_args["fp16"] is True
    assert Path(cfg.template_path) == REPO / "self_model/template/qwen2_chatml.json"  # found from the repo root


def test_base_overrides_and_env(tmp_path, monkeypatch):
    write_yaml(tmp_path / "base.yaml", {
        "tokenizer_name_or_path": str(TINY_TOKENIZER),
        "model": {"init_from_config": str(TINY_MODEL_CONFIG)},
        "data": {"train_file": str(SFT_TRAIN), "max_length": 64},
        "training_args": {"output_dir": "${oc.env:RUN_DIR}", "learning_rate": 1.0e-3},
    })
    child = write_yaml(tmp_path / "sub" / "child.yaml", {"base": "../base.yaml", "data": {"max_length": 128}})
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "run"))
    cfg = load_config_file(SFT_STAGE, child, ["training_args.learning_rate=1e-4", "peft.enabled=true", "peft.lora_r=16"])
    assert cfg.data.max_length == 128  # child wins over base
    assert cfg.data.train_file == str(SFT_TRAIN)  # inherited
    assert cfg.training_args["learning_rate"] == pytest.approx(1e-4)  # `1e-4` (YAML string) coerced to float
    assert cfg.peft.enabled and cfg.peft.lora_r == 16
    assert cfg.output_dir == str(tmp_path / "run")
    assert cfg.resolved["training_args"]["output_dir"] == "${oc.env:RUN_DIR}"  # env values are not saved


def _problems(tmp_path, data: dict, overrides=()) -> str:
    base = {
        "tokenizer_name_or_path": str(TINY_TOKENIZER),
        "model": {"init_from_config": str(TINY_MODEL_CONFIG)},
        "data": {"train_file": str(SFT_TRAIN)},
    }
    for key, value in data.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    path = write_yaml(tmp_path / "bad.yaml", base)
    with pytest.raises(ConfigError) as err:
        load_config_file(SFT_STAGE, path, list(overrides))
    return str(err.value)


@pytest.mark.parametrize(
    "data, overrides, expected",
    [
        ({"training_args": {"learning_rat": 1e-4}}, (), "training_args.learning_rat: unknown key"),
        ({"training_args": {"learning_rat": 1e-4}}, (), "did you mean 'learning_rate'?"),
        ({"peft": {"lora_rank": 8}}, (), "peft.lora_rank"),
        ({"peft": {"lora_rank": 8}}, (), "did you mean 'lora_r'?"),
        ({"traec": "none"}, (), "did you mean 'trace'?"),
        ({"peft": {"lora_r": "eight"}}, (), "peft.lora_r: expected an integer, got 'eight'"),
        ({"training_args": {"num_train_epochs": "many"}}, (), "training_args.num_train_epochs"),
        ({}, ("data.max_length=big",), "data.max_length (command line): expected an integer"),
        ({"data": {"train_on": "assistant"}}, (), "data.train_on"),
        ({"data": {"bad_rows": "ignore"}}, (), "must be one of 'fail', 'skip'"),
        ({"template": "qwen_chatml"}, (), "did you mean 'qwen2_chatml'?"),
        ({"trace": "wandbb"}, (), "did you mean 'wandb'?"),
        ({"data": {"train_file": "no/such/file.jsonl"}}, (), "data.train_file: file not found: no/such/file.jsonl"),
        ({"template_path": "missing_template.json"}, (), "template_path: file not found"),
        ({"model": {"init_from_config": "nowhere/config.json"}}, (), "model.init_from_config"),
        ({"training_args": {"report_to": "wandb"}}, (), "use `trace` instead"),
        ({"training_args": {"max_length": 64}}, (), "use `data.max_length` instead"),
        ({"peft": {"method": "qlora", "enabled": False}}, (), "qlora trains adapters"),
        ({"peft": {"method": "qlora", "enabled": True}}, (), "qlora quantizes the weights loaded from model_name_or_path"),
        ({"data": {"eval_split": 1.5}}, (), "data.eval_split"),
        ({"resume": True, "overwrite": True}, (), "resume and overwrite exclude each other"),
    ],
)
def test_bad_config_messages(tmp_path, data, overrides, expected):
    assert expected in _problems(tmp_path, data, overrides)


def test_all_problems_reported_at_once(tmp_path):
    message = _problems(tmp_path, {"peft": {"lora_rank": 8}, "training_args": {"learning_rat": 1}, "data": {"max_length": "x"}})
    assert message.count("\n  - ") == 3


def test_missing_env_var_names_the_key(tmp_path, monkeypatch):
    monkeypatch.delenv("SELF_MODEL_NO_SUCH_VAR", raising=False)
    message = _problems(tmp_path, {"training_args": {"output_dir": "${oc.env:SELF_MODEL_NO_SUCH_VAR}"}})
    assert "training_args.output_dir" in message and "SELF_MODEL_NO_SUCH_VAR" in message


def test_base_cycle_and_missing_base(tmp_path):
    write_yaml(tmp_path / "a.yaml", {"base": "b.yaml"})
    write_yaml(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config_file(SFT_STAGE, tmp_path / "a.yaml")
    write_yaml(tmp_path / "c.yaml", {"base": "gone.yaml"})
    with pytest.raises(ConfigError, match="gone.yaml"):
        load_config_file(SFT_STAGE, tmp_path / "c.yaml")


def test_secrets_are_redacted(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TOKEN", "s3cret")
    path = write_yaml(tmp_path / "c.yaml", {
        "tokenizer_name_or_path": str(TINY_TOKENIZER),
        "model": {"init_from_config": str(TINY_MODEL_CONFIG)},
        "data": {"train_file": str(SFT_TRAIN)},
        "training_args": {"hub_token": "${oc.env:MY_TOKEN}", "output_dir": str(tmp_path / "o")},
    })
    cfg = load_config_file(SFT_STAGE, path)
    assert cfg.training_args["hub_token"] == "s3cret"
    assert "s3cret" not in json.dumps(cfg.resolved)


def test_cli_bad_config_exits_2_without_traceback(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", {"data": {"train_file": str(SFT_TRAIN)}, "peft": {"lora_rank": 4}})
    result = run_script(SFT_SCRIPT, "--config", str(path))
    assert result.returncode == 2
    assert "peft.lora_rank" in result.stderr and "did you mean 'lora_r'?" in result.stderr
    assert "model_name_or_path" in result.stderr  # the missing model is reported in the same message
    assert "Traceback" not in result.stderr


CONFIG_CLASSES = sorted({SFT_STAGE.training_args_class, PRETRAIN_STAGE.training_args_class, RM_STAGE.training_args_class,
                         GRPO_STAGE.training_args_class, PPO_STAGE.training_args_class,
                         *(config_class for config_class, _ in TRAINERS.values())})


@pytest.mark.parametrize("target", CONFIG_CLASSES)
def test_training_fields_read_from_source_are_the_class_fields(target):
    """The fields validation reads from the library's source (no import) are exactly those of the class."""
    from self_model.config.schema import field_types

    read = training_arg_types(target)
    real = field_types(import_class(target))
    assert set(read) == set(real)
    for name in ("learning_rate", "per_device_train_batch_size", "bf16", "seed"):
        assert read[name] == real[name], name


STAGE_SCRIPTS = ["self_model/pretrain/train_pretrain.py", SFT_SCRIPT, "self_model/rlhf/train_rm.py",
                 "self_model/rlhf/train_dpo.py", "self_model/rlhf/train_grpo.py", "self_model/rlhf/train_ppo.py"]
HEAVY = ("torch", "transformers", "trl", "verl", "datasets")


@pytest.mark.parametrize("script", STAGE_SCRIPTS)
def test_config_error_comes_before_any_heavy_import(tmp_path, script):
    """A typo is answered from the config alone: neither torch nor any trainer library is imported first."""
    path = write_yaml(tmp_path / "bad.yaml", {"model_name_or_path": "org/model", "data": {"train_file": str(SFT_TRAIN)},
                                             "training_args": {"learnin_rate": 1.0}})
    probe = (f"import runpy, sys\nsys.argv = [{script!r}, '--config', {str(path)!r}]\n"
             f"try:\n    runpy.run_path({str(REPO / script)!r}, run_name='__main__')\n"
             f"except SystemExit as exit:\n    print('exit', exit.code, [m for m in {HEAVY!r} if m in sys.modules])\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "training_args.learnin_rate: unknown key; did you mean 'learning_rate'?" in result.stderr, result.stderr
    assert result.stdout.strip() == "exit 2 []", result.stdout + result.stderr


def test_config_error_is_answered_in_seconds(tmp_path):
    path = write_yaml(tmp_path / "bad.yaml", {"data": {"train_file": str(SFT_TRAIN)}, "peft": {"lora_rank": 4}})
    start = time.perf_counter()
    result = run_script(SFT_SCRIPT, "--config", str(path))
    elapsed = time.perf_counter() - start
    assert result.returncode == 2
    assert elapsed < 10, f"{elapsed:.1f} s (about 1 s on 2 idle cores; importing torch first takes far longer)"


def test_cli_missing_config_file(tmp_path):
    result = run_script(SFT_SCRIPT, "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "config file not found" in result.stderr and "Traceback" not in result.stderr
