"""The typed settings of `process_data.py`: one dataclass per section, loaded by self_model.config's loader.

A YAML file under config/data_config/ gives the values, the command line wins; unknown keys and wrong types
fail with the file, key path and closest valid key (exit code 2).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from self_model.config import check_dataclass, locate, merge_layers, option, path_exists_or_hub_id
from self_model.data.schemas import SCHEMA_KEYS
from self_model.errors import ConfigError

SCRIPTS = ("latin", "han", "hiragana", "katakana", "hangul", "cyrillic", "greek", "arabic", "hebrew", "devanagari", "thai")
PII_KINDS = ("email", "phone", "id_card")


@dataclass
class NormalizeArgs:
    """Text normalisation, applied to every text a model reads before any filter."""

    unicode: Literal["NFKC", "NFC", "none"] = option(
        "Unicode normal form; NFKC also folds full-width letters and digits (ＡＢ１２ -> AB12) and compatibility forms.",
        "NFKC",
    )
    cjk_punctuation: Literal["fullwidth", "halfwidth"] = option(
        "`fullwidth`: , ! ? : ; right after a Chinese/Japanese character become ，！？：； (elsewhere half-width); "
        "`halfwidth`: all half-width, as NFKC leaves them.",
        "fullwidth",
    )
    whitespace: bool = option(
        "Unicode spaces become ' ', runs of spaces inside a line collapse (indentation is kept), trailing spaces "
        "go, three or more newlines become two, CRLF becomes LF.",
        True,
    )
    control_chars: bool = option("Remove control characters (except tab and newline) and invisible format characters.", True)
    strip_html: bool = option(
        "Remove HTML tags, comments, scripts and styles, and unescape entities (off by default: code may hold tags).", False
    )


@dataclass
class FilterArgs:
    """Quality filters; null turns one off. Each removal is counted under the filter's name."""

    conversations: bool = option(
        "Remove empty or one-sided rows: empty text, SFT turns that do not alternate or end without a reply, "
        "preference pairs without a prompt or with chosen equal to rejected, RL prompts without a question or answer.",
        True,
    )
    min_chars: int | None = option("Fewer characters than this (all texts of a row together) removes the row.", None)
    max_chars: int | None = option("More characters than this removes the row.", None)
    min_tokens: int | None = option("Fewer tokens than this removes the row (needs `tokenizer`).", None)
    max_tokens: int | None = option("More tokens than this removes the row (needs `tokenizer`).", None)
    tokenizer: str | None = option("Tokenizer of the token filters: a tokenizer.json, a folder holding one, or a hub id.", None)
    min_letter_ratio: float | None = option(
        "Share of letters (any script) in visible characters below this removes the row.", None
    )
    max_digit_ratio: float | None = option("Share of digits among visible characters above this removes the row.", None)
    max_symbol_ratio: float | None = option(
        "Share of punctuation and symbols in visible characters above this removes the row.", None
    )
    max_repeated_ngram_ratio: float | None = option(
        "Share of words (a Chinese/Japanese character counts as one) covered by n-grams that occur more than once "
        "in the row; above this removes the row (catches spam and generation loops).",
        None,
    )
    repeated_ngram_size: int = option("n of the repeated n-gram filter, in words.", 10)
    bad_words: list[str] = option(
        "Words or phrases to look for, case-insensitive: ASCII words match whole words, others any substring.", []
    )
    bad_words_file: str | None = option("A file of further bad words, one per line.", None)
    max_bad_words: int = option("Rows with more bad-word hits than this are removed.", 0)
    scripts: list[Literal[SCRIPTS]] = option(f"Scripts allowed by the script-share filter ({', '.join(SCRIPTS)}); empty: off.", [])
    min_script_share: float = option("Share of a row's letters that must be in `scripts`.", 0.8)


@dataclass
class DecontaminateArgs:
    """Remove training rows that share a long n-gram with an evaluation set."""

    eval_files: list[str] = option("Evaluation data (files or dataset ids); every string of a row counts. Empty: off.", [])
    ngram_size: int = option("n-gram length in words (a Chinese/Japanese character counts as one); 13 as in GPT-3.", 13)


@dataclass
class DedupArgs:
    """Exact and near-duplicate removal; the first copy in input order survives."""

    exact: bool = option("Remove rows identical to an earlier one after normalisation.", False)
    near: bool = option("Remove rows whose MinHash estimate of Jaccard similarity to an earlier row is >= threshold.", False)
    threshold: float = option(
        "Jaccard similarity of character shingles at or above which rows are near-duplicates. 0.5 on 5-character "
        "shingles finds copies with about 5% of characters edited (their similarity is ~0.6).",
        0.5,
    )
    num_perm: int = option("MinHash permutations: more gives a finer similarity estimate, at a cost in speed and disk.", 128)
    shingle_chars: int = option("Characters per shingle (characters, not words, so Chinese works).", 5)


@dataclass
class ProcessSettings:
    """Everything `process_data.py` does, from input files to train.jsonl / validation.jsonl and the report."""

    input: str | list[str] | None = option("Input files (.jsonl/.json/.parquet/.csv/.txt) or dataset ids, in order.", None)
    output_dir: str = option(
        "Results go to output_dir/subdir: {train,validation}.jsonl and the report.", "data_process/final_data"
    )
    subdir: str = option("Subfolder of output_dir, e.g. finetune, pretrain, dpo, grpo, seq_cls, embedding.", "")
    kind: Literal["auto", "pretrain", "sft", "preference", "rl", "classification", "embedding"] = option(
        "Kind of data, written in the schema the stages read; `auto` detects it from the first row.", "auto"
    )
    keys: dict[str, str] = option(f"Rename input fields, e.g. {{prompt: query}}. Valid names: {', '.join(SCHEMA_KEYS)}.", {})
    data_source: str | None = option("RL rows without a data_source field get this one.", None)
    validation_ratio: float = option("Share of surviving rows written to validation.jsonl (chosen by a seeded hash).", 0.05)
    seed: int = option("Seed of the train/validation split.", 0)
    processes: int | None = option("Worker processes for normalise/filter/MinHash; null: one per CPU core.", None)
    chunk_size: int = option("Rows per task sent to a worker.", 1000)
    bad_rows: Literal["skip", "fail"] = option(
        "A malformed row is counted and reported with file and line (`skip`), or stops the run (`fail`).", "skip"
    )
    overwrite: bool = option("Replace an existing output_dir/subdir.", False)
    work_dir: str | None = option("Where the on-disk dedup state lives during the run; null: next to the output.", None)
    report_examples: int = option("Removed rows kept as examples in the report, per step.", 5)
    redact_pii: list[Literal[PII_KINDS]] = option(f"Replace these by placeholders: {', '.join(PII_KINDS)}.", [])
    normalize: NormalizeArgs = field(default_factory=NormalizeArgs)
    filters: FilterArgs = field(default_factory=FilterArgs)
    decontaminate: DecontaminateArgs = field(default_factory=DecontaminateArgs)
    dedup: DedupArgs = field(default_factory=DedupArgs)

    @property
    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input or [])

    @property
    def destination(self) -> Path:
        return Path(self.output_dir) / self.subdir


def load_process_settings(
    path: str | None, overrides: list[str] = (), flags: dict | None = None, check_files: bool = True
) -> ProcessSettings:
    """Settings from an optional YAML file, command-line flags and `key=value` overrides, checked as a whole."""
    merged = merge_layers(path, overrides, flags)
    problems: list[str] = []
    settings = check_dataclass(merged.resolved, ProcessSettings, merged.origin_of, problems)
    problems += validate(settings, merged.origin_of, check_files)
    if problems:
        raise ConfigError(problems, str(path) if path else "command line")
    return settings


def validate(settings: ProcessSettings, origin_of: typing.Callable[[str], str], check_files: bool) -> list[str]:
    """Cross-field rules; each message quotes the keys and values involved."""
    problems = []

    def bad(key: str, msg: str) -> None:
        problems.append(f"{key}{origin_of(key)}: {msg}")

    settings.input = [locate(spec) for spec in settings.inputs]
    settings.decontaminate.eval_files = [locate(spec) for spec in settings.decontaminate.eval_files]
    if not settings.inputs:
        bad("input", "missing: name at least one input file or dataset id (--input)")
    for key, specs in (("input", settings.inputs), ("decontaminate.eval_files", settings.decontaminate.eval_files)):
        for spec in specs:
            if check_files and not path_exists_or_hub_id(spec):
                bad(key, f"file not found: {spec}")
    for name in sorted(set(settings.keys) - set(SCHEMA_KEYS)):
        bad(f"keys.{name}", f"unknown field name (valid: {', '.join(SCHEMA_KEYS)})")
    if not 0.0 <= settings.validation_ratio < 1.0:
        bad("validation_ratio", f"must be in [0, 1), got {settings.validation_ratio}")
    if settings.processes is not None and settings.processes < 1:
        bad("processes", f"must be at least 1 (or null for one per core), got {settings.processes}")
    if settings.chunk_size < 1:
        bad("chunk_size", f"must be at least 1, got {settings.chunk_size}")
    if settings.report_examples < 0:
        bad("report_examples", f"must be 0 or more, got {settings.report_examples}")

    filters = settings.filters
    for low, high in (("min_chars", "max_chars"), ("min_tokens", "max_tokens")):
        lo, hi = getattr(filters, low), getattr(filters, high)
        if lo is not None and hi is not None and lo > hi:
            bad(f"filters.{low}", f"{low} ({lo}) is above {high} ({hi})")
    if (filters.min_tokens is not None or filters.max_tokens is not None) and not filters.tokenizer:
        bad("filters.tokenizer", "the token-length filters need a tokenizer: set filters.tokenizer")
    for key in ("min_letter_ratio", "max_digit_ratio", "max_symbol_ratio", "max_repeated_ngram_ratio", "min_script_share"):
        value = getattr(filters, key)
        if value is not None and not 0.0 <= value <= 1.0:
            bad(f"filters.{key}", f"a share must be in [0, 1], got {value}")
    if filters.repeated_ngram_size < 1:
        bad("filters.repeated_ngram_size", f"must be at least 1, got {filters.repeated_ngram_size}")
    if filters.bad_words_file:
        filters.bad_words_file = locate(filters.bad_words_file)
        if check_files and not Path(filters.bad_words_file).is_file():
            bad("filters.bad_words_file", f"file not found: {filters.bad_words_file}")
    if settings.decontaminate.ngram_size < 1:
        bad("decontaminate.ngram_size", f"must be at least 1, got {settings.decontaminate.ngram_size}")

    dedup = settings.dedup
    if not 0.0 < dedup.threshold < 1.0:
        bad("dedup.threshold", f"must be in (0, 1), got {dedup.threshold}")
    if dedup.num_perm < 16:
        bad("dedup.num_perm", f"must be at least 16, got {dedup.num_perm}")
    if dedup.shingle_chars < 1:
        bad("dedup.shingle_chars", f"must be at least 1, got {dedup.shingle_chars}")
    return problems
