"""tokenizer/train_tokenizer.py: byte-level BPE and unigram tokenizers, their options and bad input."""

import json

import pytest
from conftest import TINY, shared_path, write_jsonl
from transformers import AutoTokenizer

from tokenizer import train_tokenizer

CORPUS = TINY / "data" / "corpus.txt"
CHAT_DATA = TINY / "data" / "sft_train.jsonl"
ROUND_TRIP_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "计算 12 加 7。12 加 7 等于 19。北京是中国的首都。",
    "  leading spaces, two  spaces, trailing space \tand\ttabs\n\nblank line\r\nCRLF\n",
    " ",
    "emoji 🙂🚀👩‍👩‍👧 naïve café Ω ≈ ∑",
    "Mixed 中英文 text <0x41> ｆｕｌｌｗｉｄｔｈ",
]


def run_main(module, *args):
    """Run a script's main in this process (sparing a torch import); returns its exit code (0 without SystemExit)."""
    try:
        module.main([str(a) for a in args])
    except SystemExit as exit:
        return exit.code
    return 0


def llamafactory(name):
    """A LLaMA-Factory demo data file under ../shared (the test skips without it)."""
    return shared_path("data", "llamafactory", name)


def round_trips(tokenizer, text):
    return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_trained_tokenizer_round_trips_chinese_english_whitespace_emoji(tmp_path, model_type):
    out = tmp_path / "tok"
    args = ["--input", CORPUS, CHAT_DATA, "--model_type", model_type, "--vocab_size", 1500, "--output_dir", out]
    assert run_main(train_tokenizer, *args, "--special_tokens", "<tool_call>", "</tool_call>") == 0
    tok = AutoTokenizer.from_pretrained(out)
    assert [t for t in ROUND_TRIP_TEXTS if not round_trips(tok, t)] == []
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"]
    assert tok.convert_tokens_to_ids(specials) == [0, 1, 2, 3, 4]
    assert tok.encode("<tool_call>x</tool_call>", add_special_tokens=False)[::2] == [3, 4]  # whole, around "x"
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert tok.apply_chat_template([{"role": "user", "content": " hi"}], tokenize=False).endswith(
        "<|im_start|>user\n hi<|im_end|>\n"
    )
    assert 1000 < len(tok) <= 1500


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_trained_tokenizer_round_trips_real_text(tmp_path, model_type):
    wiki, c4 = llamafactory("wiki_demo.txt"), llamafactory("c4_demo.jsonl")
    alpaca_zh = json.loads(llamafactory("alpaca_zh_demo.json").read_text(encoding="utf-8"))
    chinese = [f"{row['instruction']}{row['input']}\n{row['output']}" for row in alpaca_zh]
    zh_train = write_jsonl(tmp_path / "zh.jsonl", [{"text": t} for t in chinese[:2000]])
    wiki_part = tmp_path / "wiki.txt"
    wiki_part.write_text("".join(wiki.read_text(encoding="utf-8").splitlines(keepends=True)[:8]), encoding="utf-8")
    out = tmp_path / "tok"
    assert run_main(train_tokenizer, "--input", wiki_part, zh_train, "--model_type", model_type, "--vocab_size", 8000,
                    "--output_dir", out) == 0  # fmt: skip
    tok = AutoTokenizer.from_pretrained(out)
    held_out = [json.loads(line)["text"] for line in c4.read_text(encoding="utf-8").splitlines()] + chinese[2000:]
    assert [t[:80] for t in held_out if not round_trips(tok, t)] == []


def test_train_tokenizer_reads_blank_line_blocks_and_a_jinja_template(tmp_path):
    corpus = tmp_path / "blocks.txt"
    corpus.write_text("first line\nsame document\n\n\nsecond document\n  \nthird\n", encoding="utf-8")
    assert list(train_tokenizer.iter_texts([corpus], txt_blocks=True)) == [
        "first line\nsame document", "second document", "third"
    ]  # fmt: skip
    assert list(train_tokenizer.iter_texts([corpus])) == ["first line", "same document", "second document", "third"]
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}", encoding="utf-8")
    out = tmp_path / "tok"
    assert run_main(train_tokenizer, "--input", corpus, CORPUS, "--txt_blocks", "--chat_template", template,
                    "--vocab_size", 400, "--output_dir", out) == 0  # fmt: skip
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "user: hi\n"


@pytest.mark.parametrize(
    "case, message",
    [
        ("unigram_small_vocab", "--vocab_size 300 is too small for --model_type unigram"),
        ("missing_template", "--chat_template nope.jinja: not one of chatml, none"),
        ("bad_jsonl", "bad.jsonl:2: expected a 'text' or 'messages' field"),
    ],
)
def test_train_tokenizer_bad_input(tmp_path, capsys, case, message):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"content": "no text"}])
    args = {
        "unigram_small_vocab": ["--input", CORPUS, "--model_type", "unigram", "--vocab_size", 300],
        "missing_template": ["--input", CORPUS, "--chat_template", "nope.jinja"],
        "bad_jsonl": ["--input", bad],
    }[case]
    assert run_main(train_tokenizer, *args, "--output_dir", tmp_path / "out") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
