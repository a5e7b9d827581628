"""The process_data.py command: flags, a shipped config, and user errors as one message with exit code 2."""

from __future__ import annotations

import json

from tests.helpers import REPO, run_script, write_jsonl, write_yaml

SCRIPT = "data_process/process_data.py"


def test_command_line_run(tmp_path):
    rows = [{"instruction": f"Say {i} twice.", "output": f"{i} {i}."} for i in range(30)]
    rows += rows[:5]  # exact copies
    source = write_jsonl(tmp_path / "sft.jsonl", rows)
    out = tmp_path / "final"
    result = run_script(SCRIPT, "--input", str(source), "--output_dir", str(out), "--subdir", "finetune",
                        "--dedup", "--near_dedup", "--processes", "1", "validation_ratio=0.2")
    assert result.returncode == 0, result.stderr
    assert "kind: sft (detected from" in result.stdout and "removed by exact_dup: 5" in result.stdout
    train = (out / "finetune" / "train.jsonl").read_text().splitlines()
    validation = (out / "finetune" / "validation.jsonl").read_text().splitlines()
    assert len(train) + len(validation) == 30 and validation
    assert json.loads(train[0])["messages"][0]["role"] == "user"

    again = run_script(SCRIPT, "--input", str(source), "--output_dir", str(out), "--subdir", "finetune")
    assert again.returncode == 2 and "already holds output; pass --overwrite" in again.stderr and "Traceback" not in again.stderr
    replaced = run_script(SCRIPT, "--input", str(source), "--output_dir", str(out), "--subdir", "finetune", "--overwrite")
    assert replaced.returncode == 0


def test_config_file_with_command_line_overrides(tmp_path):
    source = write_jsonl(tmp_path / "corpus.jsonl", [{"text": "Visit <b>our</b> site &amp; mail admin@example.com today."}] * 3)
    settings = {"input": str(source), "output_dir": str(tmp_path / "final"), "subdir": "pretrain",
                "normalize": {"strip_html": True}, "dedup": {"exact": True}}
    config = write_yaml(tmp_path / "c.yaml", settings)
    result = run_script(SCRIPT, "--config", str(config), "--redact_pii", "processes=1")
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "final" / "pretrain" / "train.jsonl").read_text().splitlines()
    validation = (tmp_path / "final" / "pretrain" / "validation.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines + validation] == [{"text": "Visit our site & mail <EMAIL> today."}]


def test_config_errors_exit_2_without_traceback(tmp_path):
    config = write_yaml(tmp_path / "bad.yaml", {"input": "missing.jsonl", "filters": {"min_char": 3}, "dedup": {"treshold": 0.5}})
    result = run_script(SCRIPT, "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "filters.min_char: unknown key; did you mean 'min_chars'?" in result.stderr
    assert "dedup.treshold: unknown key; did you mean 'threshold'?" in result.stderr
    assert "input: file not found: missing.jsonl" in result.stderr


def test_unknown_kind_of_data_names_the_row(tmp_path):
    source = write_jsonl(tmp_path / "odd.jsonl", [{"title": "x", "body": "y"}])
    result = run_script(SCRIPT, "--input", str(source), "--output_dir", str(tmp_path / "o"), "--processes", "1")
    assert result.returncode == 2 and f"{source}:1: cannot tell the kind of data" in result.stderr
    assert "set kind (pretrain, sft, preference, rl, classification, embedding)" in result.stderr and not (tmp_path / "o").exists()


def test_shipped_configs_point_at_the_stage_inputs():
    """The finetune stage config reads what config/data_config/finetune.yaml writes."""
    import yaml

    data_config = yaml.safe_load((REPO / "config" / "data_config" / "finetune.yaml").read_text())
    stage_config = yaml.safe_load((REPO / "config" / "self_model_config" / "finetune.yaml").read_text())
    written = f"{data_config['output_dir']}/{data_config['subdir']}"
    assert stage_config["data"]["train_file"] == f"{written}/train.jsonl"
    assert stage_config["data"]["eval_file"] == f"{written}/validation.jsonl"
