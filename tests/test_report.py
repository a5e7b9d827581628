"""report.md and the PNG plots of a run and of a pipeline (self_model/report.py)."""

import json

import matplotlib.image
import pytest

from self_model.report import LOG_FILE, read_log, summary_rows, write_log, write_pipeline_report, write_report


def logged_rows(steps: int = 6) -> list[dict]:
    """What a TRL trainer's log history looks like: training rows, an eval row, rollout metrics, the final row."""
    rows = [{"loss": 4.0 / (s + 1), "grad_norm": 1.0 + s, "learning_rate": 1e-3 * (1 - s / steps), "num_tokens": 1000 * s,
             "reward": 0.1 * s, "kl": 0.01 * s, "completions/mean_length": 9.0, "elapsed_s": 2.0 * s,
             "peak_memory_gib": 0.5, "step": s + 1} for s in range(steps)]
    rows.insert(3, {"eval_loss": 2.5, "step": 3})
    rows.append({"train_runtime": 12.0, "train_loss": 1.5, "step": steps})
    return rows


def test_run_report_plots_every_logged_step(tmp_path):
    report = write_report(tmp_path, "grpo", logged_rows(), {"train_loss": 1.5, "reward_last": 0.5})
    assert len(read_log(tmp_path)) == 8 and (tmp_path / LOG_FILE).is_file()
    for name in ("training.png", "eval.png", "rl.png", "speed.png"):
        image = matplotlib.image.imread(tmp_path / name)
        assert image.shape[0] > 200 and image.shape[1] > 400, name
        assert image[..., :3].std() > 0.05, f"{name} is blank"
    text = report.read_text()
    assert "train loss: 6 points, learning rate: 6 points, grad norm: 6 points" in text
    assert "eval loss: 1 points" in text and "mean reward: 6 points" in text
    assert "tokens/s: 5 points" in text  # the first row has no earlier one to measure against
    assert "| reward_last | 0.5 |" in text


def test_tokens_per_second_from_logged_tokens_and_time(tmp_path):
    write_log(tmp_path, logged_rows())
    speeds = [row["tokens_per_second"] for row in read_log(tmp_path) if "tokens_per_second" in row]
    assert speeds == pytest.approx([500.0] * 5)


def test_report_without_logged_steps_says_so(tmp_path):
    text = write_report(tmp_path, "rm", [{"train_runtime": 1.0, "step": 0}], {}).read_text()
    assert "Nothing was logged" in text and not list(tmp_path.glob("*.png"))


def test_pipeline_report_table_names_each_step_model(tmp_path):
    steps = {}
    for name in ("cpt", "sft", "grpo"):
        (tmp_path / name).mkdir()
        steps[name] = {"stage": name, "status": "done", "output": str(tmp_path / name), "model": str(tmp_path / name),
                       "seconds": 1.0}
    write_report(tmp_path / "sft", "sft", logged_rows(), {})
    steps["eval"] = {"stage": "eval", "status": "done", "output": str(tmp_path / "eval"), "model": str(tmp_path / "eval"),
                     "metrics": {str(tmp_path / n): {"arithmetic": {"accuracy": a, "examples": 155},
                                                     "answers": {"perplexity": 9.0 - 10 * a}}
                                 for n, a in (("cpt", 0.0), ("sft", 0.4), ("grpo", 0.6))}}
    manifest = {"pipeline": "p.yaml", "steps": steps}
    assert [row["step"] for row in summary_rows(manifest)] == ["cpt", "sft", "grpo"]
    text = write_pipeline_report(tmp_path, manifest).read_text()
    assert "| sft | 0.4 | 5 |" in text and "[report](sft/report.md)" in text
    assert matplotlib.image.imread(tmp_path / "summary.png").shape[1] > 400
    json.dumps(manifest)
