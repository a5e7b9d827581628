"""evaluate: chat perplexity equals the model's own loss on the trained tokens, accuracy goes through the reward
functions (greedy and sampled), several models give one table, lm-eval runs a task from local files, bad suites
get one message each."""

from __future__ import annotations

import json
import math

import pytest
import torch

from self_model.evaluate import AccuracyTask, PerplexityTask, accuracy, main, perplexity
from self_model.generation import Completion, Sampling, open_engine
from self_model.outputs import OutputDir
from tests.helpers import REPO, SFT_EVAL, write_jsonl, write_yaml

EXACT_REWARD = "def exact(completion, ground_truth, data_source, extra_info):\n    return float(completion == ground_truth)\n"


def test_chat_perplexity_is_the_loss_on_trained_tokens(tiny_outputs):
    from self_model.template import encode_conversation

    engine = open_engine(OutputDir.open(str(tiny_outputs["lora"])))
    task = PerplexityTask(file=f"{SFT_EVAL}#12", max_length=64)
    result = perplexity(engine, task, seed=0)

    rows = [json.loads(line) for line in SFT_EVAL.read_text().splitlines()]
    from self_model.data.sources import BadRowLog, read_source

    picked = [row.data for row in read_source(f"{SFT_EVAL}#12", BadRowLog("fail"), 0)]
    assert len(picked) == 12 and all(p in rows for p in picked)
    total, tokens = 0.0, 0
    for row in picked:
        encoded = encode_conversation(row["messages"], engine.tokenizer, engine.renderer, "all_assistant", 64)
        labels = torch.tensor([encoded.labels])
        with torch.no_grad():
            loss = engine.model(input_ids=torch.tensor([encoded.input_ids]), labels=labels).loss
        trained = int((labels[0, 1:] != -100).sum())
        total, tokens = total + float(loss) * trained, tokens + trained
    assert result["tokens"] == tokens
    assert result["nll"] == pytest.approx(total / tokens, abs=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total / tokens), rel=1e-5)


def test_accuracy_scores_completions_with_the_reward(tiny_outputs, tmp_path):
    engine = open_engine(OutputDir.open(str(tiny_outputs["base"])), template="qwen2_chatml", batch_size=4)
    questions = [f"What is {a} + {a}?" for a in range(6)]
    greedy = engine.generate([engine.prompt_ids([{"role": "user", "content": q}]) for q in questions],
                             Sampling(max_new_tokens=6))
    assert all(c[0].text for c in greedy)
    # half the rows expect exactly the greedy reply, half something else: accuracy must be exactly one half
    rows = [{"prompt": q, "ground_truth": c[0].text if i % 2 == 0 else "no such reply", "data_source": "t"}
            for i, (q, c) in enumerate(zip(questions, greedy))]
    (tmp_path / "exact.py").write_text(EXACT_REWARD)
    task = AccuracyTask(file=str(write_jsonl(tmp_path / "prompts.jsonl", rows)), reward=f"{tmp_path}/exact.py:exact",
                        max_new_tokens=6)
    result = accuracy(engine, task, seed=0)
    assert result["accuracy"] == 0.5 and result["examples"] == 6

    sampled = AccuracyTask(file=task.file, reward=task.reward, max_new_tokens=6, samples=4, temperature=1e-4)
    result = accuracy(engine, sampled, seed=0)  # near-zero temperature: every sample is the greedy reply
    assert result["pass@1"] == result["pass@4"] == result["maj@4"] == 0.5


class ScriptedEngine:
    """Replies fixed per prompt, to check the sampled metrics by hand."""

    def __init__(self, replies: list[list[str]]):
        self.replies = replies

    def prompt_ids(self, messages):
        return [0]

    def generate(self, prompts, sampling):
        assert sampling.n == 3 and sampling.temperature == 0.7
        return [[Completion(text, 1, 1, True) for text in replies] for replies in self.replies]


def test_pass_at_k_and_majority_vote(tmp_path):
    rows = [{"prompt": "2 + 2?", "ground_truth": "4"}, {"prompt": "3 * 3?", "ground_truth": "9"}]
    task = AccuracyTask(file=str(write_jsonl(tmp_path / "p.jsonl", rows)), samples=3, temperature=0.7)
    engine = ScriptedEngine([["#### 4", "#### 5", "so #### 5"], ["#### 9", "it is #### 9", "#### 1"]])
    result = accuracy(engine, task, seed=0)
    assert result["pass@1"] == pytest.approx(0.5)  # (1/3 + 2/3) / 2
    assert result["pass@3"] == 1.0 and result["maj@3"] == 0.5  # the first prompt's majority (5) is wrong


def test_side_by_side_table_and_eval_json(tiny_outputs, tmp_path, capsys):
    # the base model has no chat template of its own: the suite's `template` serves it
    suite = write_yaml(tmp_path / "suite.yaml", {"base": str(REPO / "config/eval/tiny.yaml"), "template": "qwen2_chatml"})
    models = [str(tiny_outputs["base"]), str(tiny_outputs["lora"])]
    argv = ["--config", str(suite), "--output_dir", str(tmp_path / "eval"), "tasks.arithmetic.max_new_tokens=8",
            "tasks.arithmetic.file=" + str(REPO / "examples/tiny/data/rl_prompts.jsonl#8"),
            "tasks.chat_perplexity.file=" + f"{SFT_EVAL}#8"]
    assert main([*[a for m in models for a in ("--model", m)], *argv]) == 0
    record = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert list(record["results"]) == models
    for model in models:
        assert set(record["results"][model]) == {"chat_perplexity", "arithmetic"}
        assert record["results"][model]["arithmetic"]["examples"] == 8
    base_ppl, lora_ppl = (record["results"][m]["chat_perplexity"]["perplexity"] for m in models)
    assert base_ppl != lora_ppl
    table = (tmp_path / "eval" / "eval.md").read_text()
    assert f"| task | metric | {models[0]} | {models[1]} |" in table and "| arithmetic | accuracy |" in table


@pytest.mark.parametrize(("suite", "message"), [
    ({"tasks": {"a": {"kind": "accuracy", "file": str(SFT_EVAL), "sample": 2}}}, "tasks.a.sample: unknown key; did you mean 'samples'?"),
    ({"tasks": {"a": {"kind": "acuracy"}}}, "tasks.a.kind: must be one of perplexity, accuracy, lm_eval; did you mean 'accuracy'?"),
    ({"tasks": {"a": {"kind": "perplexity", "file": "missing.jsonl"}}}, "tasks.a.file: not found: missing.jsonl"),
    ({"tasks": {"a": {"kind": "accuracy", "file": str(SFT_EVAL), "samples": 4, "temperature": 0}}},
     "tasks.a.4 samples need a temperature above 0"),
    ({"tasks": {"a": {"kind": "accuracy", "file": str(SFT_EVAL), "reward": "exactly"}}}, "tasks.a.reward: unknown reward 'exactly'"),
    ({"tasks": {}}, "tasks: name at least one task"),
])
def test_bad_suite_gets_one_message(tmp_path, capsys, suite, message):
    path = write_yaml(tmp_path / "suite.yaml", suite)
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path), "--config", str(path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_model_and_prompt_file(tiny_outputs, tmp_path, capsys):
    suite = write_yaml(tmp_path / "suite.yaml", {"tasks": {"a": {"kind": "accuracy", "file": str(tmp_path / "p.jsonl")}}})
    (tmp_path / "p.jsonl").write_text('{"prompt": "1 + 1?", "ground_truth": "2"}\n{"prompt": \n')
    for argv, message in (
        (["--model", str(tmp_path / "nothing")], "no such directory"),
        (["--model", str(tiny_outputs["lora"])], "p.jsonl:2: malformed JSON"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--config", str(suite)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_lm_eval_task_from_local_files(tiny_outputs):
    pytest.importorskip("lm_eval")
    from self_model.evaluate import LmEvalTask, lm_eval_task

    engine = open_engine(OutputDir.open(str(tiny_outputs["base"])), chat=False)
    task = LmEvalTask(tasks=["tiny_facts"], include_path=str(REPO / "config/eval/lm_eval_tasks"), limit=8)
    result = lm_eval_task(engine, task, batch_size=4)
    # lm-eval's accuracy equals the share of questions whose gold choice our own scoring ranks first
    rows = [json.loads(line) for line in (REPO / "config/eval/lm_eval_tasks/tiny_facts.jsonl").read_text().splitlines()][:8]
    correct = 0
    for row in rows:
        context = engine.tokenizer(f"Question: {row['question']}\nAnswer:", add_special_tokens=False)["input_ids"]
        scores = []
        for choice in row["choices"]:
            continuation = engine.tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
            scores.append(sum(engine.token_logprobs([context + continuation])[0][len(context) - 1:]))
        correct += scores.index(max(scores)) == row["answer"]
    assert result["tiny_facts/acc"] == pytest.approx(correct / len(rows))
