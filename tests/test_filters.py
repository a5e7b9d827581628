"""Every quality filter on a text it keeps and a text it removes, and eval-set decontamination."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_process.filters import QualityFilters, eval_ngram_hashes, repeated_ngram_ratio, words
from data_process.settings import DecontaminateArgs, FilterArgs
from tests.helpers import TINY_TOKENIZER

PROSE = "The river runs past the old mill, and the children watch the boats drift slowly toward the sea."
CHINESE = "河水流过老磨坊，孩子们看着小船慢慢地漂向大海。"


def failure(text: str, decontaminate: DecontaminateArgs | None = None, **args):
    decontaminate = decontaminate or DecontaminateArgs()
    return QualityFilters(FilterArgs(**args), decontaminate, eval_ngram_hashes(decontaminate)).first_failure(text)


@pytest.mark.parametrize(
    "args, kept, removed, step",
    [
        ({"min_chars": 20}, PROSE, "Too short.", "length"),
        ({"max_chars": 50}, CHINESE, PROSE, "length"),
        ({"min_tokens": 8, "tokenizer": str(TINY_TOKENIZER)}, PROSE, "apple", "tokens"),
        ({"max_tokens": 12, "tokenizer": str(TINY_TOKENIZER)}, "What is 12 + 7?", PROSE, "tokens"),
        ({"min_letter_ratio": 0.6}, CHINESE, "== 12.5% ++ (3/4) -- 99 ==", "char_ratio"),
        ({"max_digit_ratio": 0.3}, "Call me at 9 tonight.", "ID 8372 9182 7731 0092 1123", "char_ratio"),
        ({"max_symbol_ratio": 0.25}, PROSE, "!!! >>> $$$ ### <<< @@@ click", "char_ratio"),
        ({"max_repeated_ngram_ratio": 0.3, "repeated_ngram_size": 3}, PROSE, "buy now cheap " * 20, "repeated_ngrams"),
        ({"max_repeated_ngram_ratio": 0.3, "repeated_ngram_size": 3}, CHINESE, "快来买便宜货" * 20, "repeated_ngrams"),
        ({"bad_words": ["darn"]}, "Darning socks is an old craft.", "Well, DARN it all.", "bad_words"),
        ({"bad_words": ["坏词"]}, CHINESE, "这是一个坏词的例子", "bad_words"),
        ({"bad_words": ["spam"], "max_bad_words": 1}, "One spam is tolerated.", "spam and spam", "bad_words"),
        ({"scripts": ["latin", "han"]}, PROSE + CHINESE, "Это предложение написано по-русски.", "script"),
        ({"scripts": ["han"], "min_script_share": 0.5}, CHINESE + " OK", PROSE, "script"),
    ],
    ids=["min_chars", "max_chars", "min_tokens", "max_tokens", "min_letter_ratio", "max_digit_ratio", "max_symbol_ratio",
         "repeated_ngrams_en", "repeated_ngrams_zh", "bad_words_whole_word", "bad_words_chinese", "max_bad_words",
         "scripts", "min_script_share"],
)
def test_each_filter_keeps_and_removes(args, kept, removed, step):
    assert failure(kept, **args) is None
    name, reason = failure(removed, **args)
    assert name == step and reason


def test_filters_off_by_default_keep_anything():
    for text in ("", "!!!", "buy " * 100, "Это предложение."):
        assert failure(text) is None


def test_reasons_quote_the_setting():
    assert failure("abc", min_chars=10) == ("length", "3 characters < min_chars 10")
    _, reason = failure("Well, darn.", bad_words=["darn"])
    assert "'darn'" in reason and "max_bad_words 0" in reason


def test_bad_words_file(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("heck\n\n  ", encoding="utf-8")
    assert failure("What the heck.", bad_words_file=str(path))[0] == "bad_words"
    assert failure("Checking in.", bad_words_file=str(path)) is None


def test_repeated_ngram_ratio_counts_covered_words():
    assert repeated_ngram_ratio(words("a b c a b c"), 3) == 1.0
    assert repeated_ngram_ratio(words("a b c d e f"), 3) == 0.0
    assert repeated_ngram_ratio(words("x a b y a b z"), 2) == pytest.approx(4 / 7)
    assert words("Hello 世界, it's 2024") == ["hello", "世", "界", "it", "s", "2024"]


def test_decontamination_against_an_eval_file(tmp_path):
    eval_file = tmp_path / "eval.jsonl"
    question = "Natalia sold clips to 48 of her friends in April and then she sold half as many clips in May"
    eval_file.write_text(json.dumps({"question": question, "answer": "#### 72"}) + "\n" + json.dumps({"q": CHINESE}) + "\n")
    args = DecontaminateArgs(eval_files=[str(eval_file)], ngram_size=8)
    assert failure(PROSE, args) is None
    name, reason = failure("Homework: natalia SOLD clips to 48 of her friends in April, then more.", args)
    assert name == "decontaminate" and "natalia sold clips to 48 of her friends" in reason
    assert failure("题目：" + CHINESE[:12], args)[0] == "decontaminate"  # Chinese n-grams are counted in characters
    assert failure(CHINESE[:7], args) is None  # shorter than one n-gram


def test_eval_hashes_are_unique_and_sorted(tmp_path):
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"a": "one two three", "b": ["one two three", {"c": "two three four"}]}) + "\n")
    hashes = eval_ngram_hashes(DecontaminateArgs(eval_files=[str(eval_file)], ngram_size=2))
    assert len(hashes) == 3 and np.all(hashes[:-1] < hashes[1:])
