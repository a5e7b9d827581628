"""The shipped tiny demo assets (examples/tiny) and the scripts that regenerate them."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "examples" / "tiny"
DATA_FILES = ["sft_train.jsonl", "sft_eval.jsonl", "corpus.txt", "pref_train.jsonl", "pref_eval.jsonl", "rl_prompts.jsonl",
              "cls_train.jsonl", "cls_eval.jsonl", "emb_train.jsonl", "emb_eval.jsonl"]
ARITHMETIC_FILES = ["sft_train.jsonl", "sft_eval.jsonl", "eval.jsonl", "eval_held_out.jsonl", "prompts_train.jsonl",
                    "pref_train.jsonl"]
TEXTS = [
    "What is 12 + 7? 12 + 7 = 19.",
    "计算 12 加 7。12 加 7 等于 19。",
    "Mixed 中英文 text,  two spaces,\ttabs\nand newlines: naïve café 🙂",
]


def run_script(*args):
    """Run a repository script with this interpreter and return the completed process."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def train_tokenizer(*args):
    """Run tokenizer/train_tokenizer.py with the given arguments."""
    return run_script(ROOT / "tokenizer" / "train_tokenizer.py", *args)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY / "tokenizer")


def test_sample_data_is_deterministic_and_matches_shipped(tmp_path):
    result = run_script(ROOT / "data_process" / "make_sample_data.py", "--out_dir", tmp_path, "--seed", "0")
    assert result.returncode == 0, result.stderr
    for name in DATA_FILES + [f"arithmetic/{name}" for name in ARITHMETIC_FILES]:
        assert (tmp_path / name).read_bytes() == (TINY / "data" / name).read_bytes(), name


def test_arithmetic_demonstrations_cover_half_the_facts_and_prompts_all():
    read = lambda name: [json.loads(line) for line in (TINY / "data" / "arithmetic" / name).read_text().splitlines()]
    every = {row["prompt"] for row in read("eval.jsonl")}
    held_out = {row["prompt"] for row in read("eval_held_out.jsonl")}
    demonstrated = {row["messages"][0]["content"] for row in read("sft_train.jsonl")}
    assert len(every) == 155 and held_out == every - demonstrated and len(demonstrated) == 155 // 2
    assert {row["prompt"] for row in read("pref_train.jsonl")} <= demonstrated
    assert {row["prompt"] for row in read("prompts_train.jsonl")} == every
    assert {row["messages"][0]["content"] for row in read("sft_eval.jsonl")} == every


def test_sample_data_rows_are_chat_messages():
    train = [json.loads(line) for line in (TINY / "data" / "sft_train.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [json.loads(line) for line in (TINY / "data" / "sft_eval.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(train) == 600 and len(evals) == 60
    for row in train + evals:
        roles = [m["role"] for m in row["messages"]]
        turns = roles[1:] if roles[0] == "system" else roles
        assert turns in (["user", "assistant"], ["user", "assistant"] * 2), roles
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])


def test_shipped_tokenizer_round_trips_and_has_chatml(tokenizer):
    for text in TEXTS:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tokenizer.encode("<|im_end|>", add_special_tokens=False) == [2]
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    messages = [{"role": "user", "content": "hi"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_model_config_matches_tokenizer(tmp_path, tokenizer):
    (tmp_path / "config.json").write_bytes((TINY / "model_config.json").read_bytes())
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == "qwen2"
    assert config.vocab_size % 64 == 0 and len(tokenizer) <= config.vocab_size < len(tokenizer) + 64
    assert (config.eos_token_id, config.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)


def test_train_tokenizer_from_shipped_corpus(tmp_path, monkeypatch):
    # In-process, to spare a second torch import; the bad-input tests below run the script itself.
    spec = importlib.util.spec_from_file_location("train_tokenizer", ROOT / "tokenizer" / "train_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    inputs = [str(TINY / "data" / "corpus.txt"), str(TINY / "data" / "sft_eval.jsonl")]
    monkeypatch.setattr(
        sys, "argv", ["train_tokenizer.py", "--input", *inputs, "--vocab_size", "500", "--output_dir", str(tmp_path)]
    )
    module.main()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tok) == 500 and tok.eos_token_id == 2
    assert tok.decode(tok.encode(TEXTS[1], add_special_tokens=False)) == TEXTS[1]
    assert tok.chat_template is not None


@pytest.mark.parametrize(
    "case, message",
    [("missing", "input file not found"), ("empty", "empty corpus"), ("small_vocab", "--vocab_size 100 is too small")],
)
def test_train_tokenizer_bad_input(tmp_path, case, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("" if case == "empty" else "some text\n", encoding="utf-8")
    inputs = tmp_path / "nope.txt" if case == "missing" else corpus
    vocab_size = "100" if case == "small_vocab" else "300"
    result = train_tokenizer("--input", inputs, "--vocab_size", vocab_size, "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
