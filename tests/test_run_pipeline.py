"""The pipeline (self_model/pipeline.py): bad pipeline files, the dry run, and a trimmed demo pipeline (tokenizer ->
SFT -> eval, a few steps each) that fails on bad data, is fixed, skips what is unchanged and resumes what stopped.
The full demo (config/pipeline/tiny.yaml) takes minutes and is measured in README.md, not run here."""

import json

import pytest

from self_model.pipeline import MANIFEST, main
from tests.helpers import REPO, TINY, run_script, write_yaml

ARITHMETIC = TINY / "data" / "arithmetic"


def run_main(capsys, *argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(map(str, argv)))
    return exit_info.value.code, capsys.readouterr().err


def pipeline_file(tmp_path, steps: dict, name: str = "pipeline.yaml") -> str:
    return str(write_yaml(tmp_path / name, {"output_dir": str(tmp_path / "out"), "steps": steps}))


SFT = {"stage": "sft", "config": "config/examples/sft_tiny.yaml"}
TOKENIZER = {"stage": "tokenizer", "args": {"input": [str(TINY / "data" / "corpus.txt")], "vocab_size": 600}}


@pytest.mark.parametrize("steps, message", [
    ({"a": {"stage": "sfft"}}, "steps.a (line 3): unknown stage 'sfft'; did you mean 'sft'?"),
    ({"a": {**SFT, "overrides": {"model_name_or_path": "${steps.base.output}"}}}, "no step named 'base'"),
    ({"a": {**SFT, "overrides": {"model_name_or_path": "${steps.b.output}"}}, "b": SFT},
     "steps.a (line 3): uses step b, which comes later"),
    ({"a": {**SFT, "overrides": {"model_name_or_path": "${steps.b.output}"}},
      "b": {**SFT, "overrides": {"model_name_or_path": "${steps.a.output}"}}}, "a cycle of references: a -> b -> a"),
    ({"a": SFT, "b": {**SFT, "output_dir": "{out}/a"}}, "writes to {out}/a, as step a does"),
    ({"a": {**SFT, "overrides": {"training_args": {"output_dir": "x"}}}}, "use the step's `output_dir` key"),
    ({"a": {**SFT, "confg": "x"}}, "unknown key 'confg'; did you mean 'config'?"),
    ({"a": {"stage": "sft"}}, "stage sft needs `config`"),
    ({"a": {**SFT, "overrides": {"training_args": {"learning_rat": 1}}}},
     "steps.a (line 3): training_args.learning_rat"),
    ({"a": {**TOKENIZER, "args": {**TOKENIZER["args"], "vocabulary": 5}}}, "unrecognized arguments: --vocabulary 5"),
])
def test_bad_pipeline_file_fails_up_front(tmp_path, capsys, steps, message):
    steps = json.loads(json.dumps(steps).replace("{out}", str(tmp_path / "out")))
    code, err = run_main(capsys, "--config", pipeline_file(tmp_path, steps))
    assert code == 2 and message.replace("{out}", str(tmp_path / "out")) in err, err
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_duplicate_step_names_are_refused(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text("steps:\n  a:\n    stage: sft\n  a:\n    stage: cpt\n", encoding="utf-8")
    code, err = run_main(capsys, "--config", path)
    assert code == 2 and "steps.a (line 4): a second step named 'a' (first on line 2)" in err


def test_dry_run_checks_later_steps_for_shape(tmp_path, capsys):
    assert main(["--config", str(REPO / "config/pipeline/tiny.yaml"), "--dry-run", f"output_dir={tmp_path / 'out'}"]) == 0
    out = capsys.readouterr().out
    assert "[dry run] sft (sft): config checked for shape (cpt not run yet)" in out
    assert "[dry run] 8 steps valid" in out and not (tmp_path / "out" / MANIFEST).exists()
    assert main(["--config", str(REPO / "config/pipeline/tiny.yaml"), "--dry-run", "--only", "grpo",
                 f"output_dir={tmp_path / 'out'}"]) == 0
    dry_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[dry run]")]
    assert dry_lines == ["[dry run] grpo (grpo): config checked for shape (sft not run yet)", "[dry run] 1 step valid; "
                         "nothing was trained"]


def manifest(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / MANIFEST).read_text())["steps"]


def test_trimmed_pipeline_fails_then_skips_and_resumes(tmp_path):
    sft_data = tmp_path / "sft_train.jsonl"
    good = (ARITHMETIC / "sft_train.jsonl").read_text().splitlines()[:64]
    sft_data.write_text("\n".join([*good, "{not json"]) + "\n")
    steps = {
        "tokenizer": TOKENIZER,
        "sft": {**SFT, "overrides": {
            "tokenizer_name_or_path": "${steps.tokenizer.output}", "eval_before_training": False,
            "data": {"train_file": str(sft_data), "eval_file": f"{ARITHMETIC / 'sft_eval.jsonl'}#16", "max_length": 64},
            "training_args": {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "logging_steps": 1,
                              "per_device_train_batch_size": 8}}},
        "eval": {"stage": "eval", "config": "config/eval/tiny_arithmetic.yaml", "models": ["${steps.sft.output}"],
                 "overrides": {"tasks": {"arithmetic": {"file": f"{ARITHMETIC / 'eval.jsonl'}#8", "max_new_tokens": 6},
                                         "held_out": {"file": f"{ARITHMETIC / 'eval_held_out.jsonl'}#8", "max_new_tokens": 6},
                                         "answers": {"file": f"{ARITHMETIC / 'sft_eval.jsonl'}#8"}}}},
    }
    config = pipeline_file(tmp_path, steps)

    failed = run_script("self_model/pipeline.py", "--config", config)
    assert failed.returncode == 2 and "step sft failed" in failed.stderr, failed.stdout[-2000:] + failed.stderr
    assert {k: v["status"] for k, v in manifest(tmp_path).items()} == {"tokenizer": "done", "sft": "failed"}

    sft_data.write_text("\n".join(good) + "\n")  # the user fixes the data
    fixed = run_script("self_model/pipeline.py", "--config", config)
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr
    assert "[pipeline] tokenizer: unchanged" in fixed.stdout and "[pipeline] sft (sft):" in fixed.stdout
    steps_done = manifest(tmp_path)
    assert [s["status"] for s in steps_done.values()] == ["done"] * 3
    assert len(steps_done["sft"]["inputs"]) >= 2  # the data files, with their fingerprints
    results = steps_done["eval"]["metrics"][steps_done["sft"]["model"]]
    assert 0.0 <= results["arithmetic"]["accuracy"] <= 1.0 and results["answers"]["perplexity"] > 1.0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| sft | " in report and "[report](sft/report.md)" in report and (tmp_path / "out" / "summary.png").is_file()
    logged = [json.loads(line) for line in (tmp_path / "out" / "sft" / "log_history.jsonl").read_text().splitlines()]
    sft_report = (tmp_path / "out" / "sft" / "report.md").read_text()
    assert f"train loss: {sum('loss' in row for row in logged)} points" in sft_report
    assert sft_report.startswith(f"# sft: {tmp_path / 'out' / 'sft'}\n")  # the run's folder, not the staging one

    again = run_script("self_model/pipeline.py", "--config", config)
    assert again.returncode == 0 and again.stdout.count("unchanged since") == 3, again.stdout[-2000:]

    # a run killed during sft leaves the step `running` and its checkpoints: the next run resumes it
    recorded = json.loads((tmp_path / "out" / MANIFEST).read_text())
    recorded["steps"]["sft"]["status"] = "running"
    (tmp_path / "out" / MANIFEST).write_text(json.dumps(recorded))
    for stale in (tmp_path / "out" / "sft").glob("checkpoint-4"):
        import shutil

        shutil.rmtree(stale)
    resumed = run_script("self_model/pipeline.py", "--config", config)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    assert "sft (sft) resuming from its last checkpoint" in resumed.stdout
    assert "resume: true" in (tmp_path / "out" / "configs" / "sft.yaml").read_text()
    assert "[pipeline] eval (eval):" in resumed.stdout  # its input was trained again
