"""Quality filters and eval-set decontamination: each returns why a text is removed, or None to keep it.

Word-based measures split text into words, counting each Chinese/Japanese character as one word, so the
same settings work for Chinese, English and mixed text.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import regex
import xxhash

from data_process.settings import DecontaminateArgs, FilterArgs
from self_model.data.sources import BadRowLog, iter_source
from self_model.errors import ConfigError

IDEOGRAPHS = r"\p{Han}\p{Hiragana}\p{Katakana}"
WORDS = regex.compile(rf"[{IDEOGRAPHS}]|[^\W_{IDEOGRAPHS}]+")
LETTER, DIGIT, SPACE = r"[\p{L}\p{M}]", r"\p{N}", r"\s"


def words(text: str) -> list[str]:
    """Lower-cased words; each Chinese/Japanese character is a word of its own."""
    return WORDS.findall(text.casefold())


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@functools.cache
def _every_code_point() -> str:
    return "".join(map(chr, range(0x110000)))


@functools.cache
def code_point_table(pattern: str) -> np.ndarray:
    """For every Unicode code point, whether it matches the character class `pattern` (built once, ~50 ms).

    Counting characters by looking their code points up in this table is some 50 times faster than
    `regex.findall`, which builds a string per character.
    """
    table = code_points(regex.sub(pattern, "\x01", _every_code_point())) == 1
    table[1] = regex.fullmatch(pattern, "\x01") is not None  # U+0001 is the marker itself
    return table


class Measured:
    """A text and what the filters measure on it, each computed on first use."""

    def __init__(self, text: str):
        self.text = text

    @functools.cached_property
    def words(self) -> list[str]:
        return words(self.text)

    @functools.cached_property
    def code_points(self) -> np.ndarray:
        return code_points(self.text)

    def count(self, pattern: str) -> int:
        """Characters matching the character class `pattern`."""
        return int(np.count_nonzero(code_point_table(pattern)[self.code_points]))


def ngram_hashes(units: list[str], n: int) -> np.ndarray:
    """64-bit hashes of the word n-grams of `units` (none when there are fewer than n words)."""
    grams = ("\x1f".join(units[i : i + n]).encode() for i in range(len(units) - n + 1))
    return np.fromiter((xxhash.xxh3_64_intdigest(g) for g in grams), dtype=np.uint64)


def repeated_ngram_ratio(units: list[str], n: int) -> float:
    """Share of words covered by n-grams that occur more than once (Gopher's duplicate n-gram fraction, by word)."""
    if len(units) < n:
        return 0.0
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    counts = Counter(grams)
    covered = bytearray(len(units))
    for start, gram in enumerate(grams):
        if counts[gram] > 1:
            covered[start : start + n] = b"\x01" * n
    return covered.count(1) / len(units)


def load_tokenizer(name: str):
    """A `tokenizers.Tokenizer` from a tokenizer.json, a directory holding one, or a hub id."""
    from tokenizers import Tokenizer

    path = Path(name)
    try:
        if path.is_dir():
            return Tokenizer.from_file(str(path / "tokenizer.json"))
        return Tokenizer.from_file(str(path)) if path.is_file() else Tokenizer.from_pretrained(name)
    except Exception as err:  # a missing file, bad JSON, or no network: one message for the user
        raise ConfigError([f"filters.tokenizer: cannot load {name!r} ({type(err).__name__}: {str(err)[:200]})"], name) from None


def eval_ngram_hashes(args: DecontaminateArgs) -> np.ndarray:
    """Sorted unique hashes of every n-gram in the evaluation files (every string of every row)."""
    found = [np.empty(0, dtype=np.uint64)]
    for spec in args.eval_files:
        for row in iter_source(spec, BadRowLog("fail")):
            for text in _strings(row.data):
                found.append(ngram_hashes(words(text), args.ngram_size))
    return np.unique(np.concatenate(found))


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


class QualityFilters:
    """The configured filters in a fixed order; `first_failure(text)` names the first that removes the text."""

    def __init__(self, args: FilterArgs, decontaminate: DecontaminateArgs, eval_hashes: np.ndarray):
        self.args = args
        self.tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        self.bad_words = _bad_word_pattern(args)
        self.script_class = "[" + "".join(f"\\p{{{name.capitalize()}}}" for name in args.scripts) + "]"
        self.eval_hashes = eval_hashes
        self.ngram_size = decontaminate.ngram_size
        self.checks: list[tuple[str, Callable[[Measured], str | None]]] = [
            ("length", self._length),
            ("tokens", self._tokens),
            ("char_ratio", self._char_ratio),
            ("repeated_ngrams", self._repeated_ngrams),
            ("bad_words", self._bad_words),
            ("script", self._script),
            ("decontaminate", self._decontaminate),
        ]

    def first_failure(self, text: str) -> tuple[str, str] | None:
        """(filter name, reason) of the first filter that removes `text`, or None."""
        measured = Measured(text)
        for name, check in self.checks:
            reason = check(measured)
            if reason:
                return name, reason
        return None

    def _length(self, measured: Measured) -> str | None:
        low, high = self.args.min_chars, self.args.max_chars
        return _outside(len(measured.text), low, high, "characters", "min_chars", "max_chars")

    def _tokens(self, measured: Measured) -> str | None:
        if self.tokenizer is None:
            return None
        count = len(self.tokenizer.encode(measured.text, add_special_tokens=False))
        return _outside(count, self.args.min_tokens, self.args.max_tokens, "tokens", "min_tokens", "max_tokens")

    def _char_ratio(self, measured: Measured) -> str | None:
        args = self.args
        if args.min_letter_ratio is None and args.max_digit_ratio is None and args.max_symbol_ratio is None:
            return None
        visible = (len(measured.text) - measured.count(SPACE)) or 1
        letters, digits = measured.count(LETTER) / visible, measured.count(DIGIT) / visible
        symbols = 1.0 - letters - digits
        if args.min_letter_ratio is not None and letters < args.min_letter_ratio:
            return f"letters {letters:.2f} of visible characters < min_letter_ratio {args.min_letter_ratio}"
        if args.max_digit_ratio is not None and digits > args.max_digit_ratio:
            return f"digits {digits:.2f} of visible characters > max_digit_ratio {args.max_digit_ratio}"
        if args.max_symbol_ratio is not None and symbols > args.max_symbol_ratio:
            return f"punctuation and symbols {symbols:.2f} of visible characters > max_symbol_ratio {args.max_symbol_ratio}"
        return None

    def _repeated_ngrams(self, measured: Measured) -> str | None:
        limit = self.args.max_repeated_ngram_ratio
        if limit is None:
            return None
        ratio = repeated_ngram_ratio(measured.words, self.args.repeated_ngram_size)
        if ratio > limit:
            return f"{ratio:.2f} of words in repeated {self.args.repeated_ngram_size}-grams > max_repeated_ngram_ratio {limit}"
        return None

    def _bad_words(self, measured: Measured) -> str | None:
        if self.bad_words is None:
            return None
        hits = self.bad_words.findall(measured.text)
        if len(hits) > self.args.max_bad_words:
            return f"{len(hits)} bad-word hits (e.g. {hits[0]!r}) > max_bad_words {self.args.max_bad_words}"
        return None

    def _script(self, measured: Measured) -> str | None:
        if not self.args.scripts:
            return None
        letters = code_point_table(LETTER)[measured.code_points]
        if not letters.any():
            return None  # nothing to judge the script by; the letter-ratio filter handles such rows
        in_scripts = code_point_table(self.script_class)[measured.code_points] & letters
        share = np.count_nonzero(in_scripts) / np.count_nonzero(letters)
        if share < self.args.min_script_share:
            return f"{share:.2f} of letters in {'/'.join(self.args.scripts)} < min_script_share {self.args.min_script_share}"
        return None

    def _decontaminate(self, measured: Measured) -> str | None:
        if not len(self.eval_hashes):
            return None
        units = measured.words
        hashes = ngram_hashes(units, self.ngram_size)
        places = np.minimum(np.searchsorted(self.eval_hashes, hashes), len(self.eval_hashes) - 1)  # eval_hashes is sorted
        hits = np.flatnonzero(self.eval_hashes[places] == hashes)
        if len(hits):
            shared = " ".join(units[hits[0] : hits[0] + self.ngram_size])
            return f"shares a {self.ngram_size}-gram with the eval set: {shared!r}"
        return None


def _outside(value: int, low: int | None, high: int | None, unit: str, low_key: str, high_key: str) -> str | None:
    if low is not None and value < low:
        return f"{value} {unit} < {low_key} {low}"
    if high is not None and value > high:
        return f"{value} {unit} > {high_key} {high}"
    return None


def _bad_word_pattern(args: FilterArgs) -> regex.Pattern | None:
    """One case-insensitive pattern: ASCII words match whole (not inside a longer Latin word), others as substrings."""
    listed = list(args.bad_words)
    if args.bad_words_file:
        listed += Path(args.bad_words_file).read_text(encoding="utf-8").splitlines()
    entries = sorted({word.strip().casefold() for word in listed if word.strip()}, key=len, reverse=True)
    if not entries:
        return None
    parts = []
    for word in entries:
        start = r"(?<![A-Za-z0-9])" if word[0].isascii() and word[0].isalnum() else ""
        end = r"(?![A-Za-z0-9])" if word[-1].isascii() and word[-1].isalnum() else ""
        parts.append(start + regex.escape(word) + end)
    return regex.compile("|".join(parts), regex.I)
