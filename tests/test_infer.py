"""infer: batch generation through the merged model and through base + adapter is identical (and batching changes
nothing), the chat keeps its history and answers through a pseudo-terminal, a bad prompts file gets file:line."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from self_model.generation import Sampling, open_engine
from self_model.infer import chat
from self_model.infer import main as infer_main
from self_model.merge_lora import main as merge_main
from self_model.outputs import OutputDir
from tests.helpers import REPO, script_env, write_jsonl

PROMPTS = [
    {"messages": [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"}]},
    {"conversations": [{"from": "human", "value": "把单词 yellow 倒过来写。"}]},
    {"instruction": "Reverse the word", "input": "plum", "output": "mulp"},
    {"prompt": "Write \"tiger\" in uppercase."},
    {"input": "16 小时等于多少分钟？", "output": "960"},
]


@pytest.fixture(scope="module")
def merged(tiny_outputs, tmp_path_factory):
    path = tmp_path_factory.mktemp("infer") / "merged"
    assert merge_main(["--adapter", str(tiny_outputs["lora"]), "--output_dir", str(path)]) == 0
    return path


def run_batch(model, prompts, out, *extra) -> list[dict]:
    assert infer_main(["--model", str(model), "--input", str(prompts), "--output", str(out), "--max_new_tokens", "12",
                       *extra]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_greedy_batch_is_identical_through_merged_and_adapter(tiny_outputs, merged, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    through_adapter = run_batch(tiny_outputs["lora"], prompts, tmp_path / "adapter.jsonl", "--batch_size", "4")
    through_merged = run_batch(merged, prompts, tmp_path / "merged.jsonl", "--batch_size", "1")
    assert [r["response"] for r in through_adapter] == [r["response"] for r in through_merged]
    assert all(r["response"].strip() for r in through_merged)
    first = through_merged[0]
    assert first["prompt"] == [{"role": "user", "content": "What is 3 + 4?"}] and first["reference"] == "7"
    assert through_merged[2]["reference"] == "mulp" and "reference" not in through_merged[3]
    engine = open_engine(OutputDir.open(str(merged)))
    assert first["prompt_tokens"] == len(engine.prompt_ids(first["prompt"]))
    for row in through_merged:
        assert 1 <= row["completion_tokens"] <= 12 and row["finish_reason"] in ("stop", "length")


def test_chat_keeps_history_and_clears_it(merged, monkeypatch, capsys):
    engine = open_engine(OutputDir.open(str(merged)))
    seen = []
    render = engine.prompt_ids
    monkeypatch.setattr(engine, "prompt_ids", lambda messages: seen.append(list(messages)) or render(messages))
    lines = iter(["hello", "and then?", "/clear", "again", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    chat(engine, Sampling(max_new_tokens=6), system="Be brief.")
    first_reply = seen[1][2]
    assert [m["role"] for m in seen[1]] == ["system", "user", "assistant", "user"] and first_reply["content"]
    assert capsys.readouterr().out.count(first_reply["content"]) >= 1  # the streamed text is the remembered text
    assert seen[2] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "again"}]


def read_until(fd: int, marker: str, timeout: float = 120) -> str:
    """Terminal output up to `marker` (input() writes its prompt to stderr, so both go to the terminal)."""
    seen, deadline = "", time.time() + timeout
    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.time()))
        if not ready:
            raise AssertionError(f"no {marker!r} in the terminal; got {seen[-500:]!r}")
        seen += os.read(fd, 4096).decode("utf-8", "replace")
    return seen


def test_chat_in_a_pseudo_terminal_answers_and_exits(merged):
    main_fd, child_fd = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "self_model.infer", "--model", str(merged), "--max_new_tokens", "8"],
                               stdin=child_fd, stdout=child_fd, stderr=child_fd, cwd=REPO, env=script_env())
    os.close(child_fd)
    try:
        read_until(main_fd, "user> ")
        os.write(main_fd, b"What is 3 + 4?\n")
        answer = read_until(main_fd, "user> ").split("assistant> ", 1)[1].rsplit("user> ", 1)[0]
        assert answer.strip()
        os.write(main_fd, b"/clear\n")
        assert "(conversation cleared)" in read_until(main_fd, "user> ")
        os.write(main_fd, b"/exit\n")
        assert process.wait(timeout=60) == 0
    finally:
        process.kill() if process.poll() is None else None
        os.close(main_fd)


def test_bad_prompts_file_names_the_line(merged, tmp_path, capsys):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "hi"}\n{"prompt": "unterminated\n{"messages": []}\n')
    with pytest.raises(SystemExit) as exit_info:
        infer_main(["--model", str(merged), "--input", str(bad)])
    assert exit_info.value.code == 2 and f"{bad}:2: malformed JSON" in capsys.readouterr().err
    bad.write_text('{"prompt": "hi"}\n{"messages": [{"role": "assistant", "content": "no question"}]}\n')
    with pytest.raises(SystemExit):
        infer_main(["--model", str(merged), "--input", str(bad)])
    assert f"{bad}:2: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        infer_main(["--model", str(tmp_path), "--input", str(bad)])
    assert exit_info.value.code == 2 and "neither a model directory" in capsys.readouterr().err
