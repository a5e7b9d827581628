"""Pretraining text: rows -> documents -> token ids joined with EOS -> blocks of `block_size` tokens.

Schema of the `pretrain` kind: `{"text": str}`, read from rows with `text` and from `.txt` files. The same generator
makes the blocks for the in-memory and the streaming dataset, so both give identical blocks for the same input.
Documents run across block boundaries (as in Hugging Face's run_clm); the last, shorter block is kept. Each block
records the lengths of its document pieces, so that by default (`isolate_documents`) every document attends only to
itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from self_model.config import DataSourceArgs, option
from self_model.data.built import EVAL, TRAIN, BuiltData
from self_model.data.conversations import CONVERSATION_KEYS, row_to_messages
from self_model.data.sources import BadRow, BadRowLog, Row, as_list, fingerprints, iter_source, load_rows
from self_model.errors import DataError
from self_model.template import IGNORE_INDEX

TOKENIZE_BATCH = 256  # documents per tokenizer call (the fast tokenizer encodes a batch in parallel)


@dataclass
class TextDataArgs(DataSourceArgs):
    """Plain text for continued pretraining: documents joined with EOS and cut into blocks."""

    train_file: str | list[str] | None = option(
        "Training text: .jsonl/.json/.parquet/.csv rows, .txt files or dataset ids; `name#N` takes N documents; "
        "a list mixes sources.",
        None,
    )
    text_fields: list[str] = option(
        "Fields holding a row's text; the first present one wins. Rows with none of them that hold a "
        "conversation (messages, conversations, alpaca fields) are flattened to text.",
        ["text"],
    )
    txt_documents: Literal["line", "blank_line"] = option(
        "How a .txt file splits into documents: one per line, or blocks separated by blank lines.", "line"
    )
    block_size: int = option("Tokens per training sequence; the last block may be shorter.", 1024)
    isolate_documents: bool = option(
        "Each document attends only to itself (its boundaries travel in position_ids through padding-free batches). "
        "false: documents joined by EOS attend across each other inside a block, as in Hugging Face's run_clm.", True)
    streaming: bool = option(
        "Read the training files lazily (corpora larger than memory); needs training_args.max_steps.", False
    )

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.block_size < 8:
            found.append(("data.block_size", f"must be at least 8, got {self.block_size}"))
        if not self.text_fields:
            found.append(("data.text_fields", "name at least one field"))
        if self.streaming and self.eval_split:
            found.append(("data.eval_split", "a streamed corpus cannot be split: give an eval_file instead"))
        if self.streaming:
            for spec in as_list(self.train_file):
                if re.search(r"#\d+$", spec):
                    found.append(("data.train_file", f"{spec}: `#N` sampling reads the whole source; not available "
                                  "with data.streaming (take a slice of the file instead)"))
        return found


# ---------------------------------------------------------------- the `pretrain` schema


def to_record(row: dict, keys: dict[str, str], data_source: str | None = None) -> dict:
    text = row.get(keys["text"])
    if not isinstance(text, str):
        raise BadRow(f"field {keys['text']!r} must be a string")
    return {"text": text}


def map_texts(record: dict, fn: Callable[[str], str]) -> dict:
    return {"text": fn(record["text"])}


def check_record(record: dict) -> None:
    if not record["text"].strip():
        raise BadRow("empty text")


# ---------------------------------------------------------------- building


@dataclass
class TextStats:
    documents: int = 0
    tokens: int = 0
    blocks: int = 0
    last_block_tokens: int = 0
    partial: bool = False  # counted over a prefix of a streamed corpus

    def lines(self, split: str) -> list[str]:
        scope = " (first blocks of the stream)" if self.partial else ""
        tail = f"; last block {self.last_block_tokens} tokens" if self.last_block_tokens else ""
        return [f"[{split}] documents {self.documents}, tokens {self.tokens}, blocks {self.blocks}{tail}{scope}"]


def row_text(row: Row, text_fields: list[str]) -> str:
    """A row's text: the first present of `text_fields` (then `text`, which .txt documents use), or a conversation's
    contents joined by newlines."""
    if not isinstance(row.data, dict):
        raise BadRow(f"a row must be a JSON object, got {type(row.data).__name__}")
    for name in [*text_fields, "text"]:
        value = row.data.get(name)
        if isinstance(value, str) and value.strip():
            return value
    try:
        messages = row_to_messages(row.data, "auto", CONVERSATION_KEYS)
    except BadRow as err:
        raise BadRow(f"no text in fields {', '.join(text_fields)} and not a conversation ({err})") from None
    return "\n".join(message["content"] for message in messages)


def documents(rows: Iterable[Row], text_fields: list[str], bad: BadRowLog) -> Iterator[str]:
    for row in rows:
        try:
            text = row_text(row, text_fields)
        except BadRow as err:
            bad.record(row.where, str(err))
            continue
        if text.strip():
            yield text
        else:
            bad.record(row.where, "empty text")


def document_ids(docs: Iterable[str], tokenizer) -> Iterator[list[int]]:
    """Token ids of each document followed by EOS (and preceded by BOS where the tokenizer adds one)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None and _adds_bos(tokenizer) else []
    eos = [tokenizer.eos_token_id]
    batch: list[str] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == TOKENIZE_BATCH:
            yield from (bos + ids + eos for ids in tokenizer(batch, add_special_tokens=False)["input_ids"])
            batch = []
    if batch:
        yield from (bos + ids + eos for ids in tokenizer(batch, add_special_tokens=False)["input_ids"])


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def blocks(docs: Iterable[str], tokenizer, block_size: int, stats: TextStats) -> Iterator[dict[str, list[int]]]:
    """Concatenate the documents' ids and cut them into blocks; the remainder becomes a last, shorter block.

    `seq_lengths` are the lengths of the document pieces in a block, in order (what padding-free batches turn into
    position_ids that restart at each document)."""
    buffer: list[int] = []
    pieces: list[int] = []
    for ids in document_ids(docs, tokenizer):
        stats.documents += 1
        stats.tokens += len(ids)
        buffer.extend(ids)
        pieces.append(len(ids))
        while len(buffer) >= block_size:
            stats.blocks += 1
            yield {"input_ids": buffer[:block_size], "seq_lengths": _take(pieces, block_size)}
            buffer = buffer[block_size:]
    if buffer:
        stats.blocks += 1
        stats.last_block_tokens = len(buffer)
        yield {"input_ids": buffer, "seq_lengths": pieces}


def _take(pieces: list[int], count: int) -> list[int]:
    """The lengths covering the first `count` tokens (the last one split); `pieces` keeps the rest."""
    taken = []
    while count:
        step = min(pieces[0], count)
        taken.append(step)
        count -= step
        if step == pieces[0]:
            pieces.pop(0)
        else:
            pieces[0] -= step
    return taken


def block_labels(block: dict[str, list[int]], isolate_documents: bool) -> list[int]:
    """What the loss trains in a block: every token, but a document's first one when documents are isolated (nothing
    before it in its document predicts it)."""
    labels = list(block["input_ids"])
    if isolate_documents:
        start = 0
        for length in block["seq_lengths"]:
            labels[start] = IGNORE_INDEX
            start += length
    return labels


@dataclass
class BuiltText(BuiltData):
    streaming: bool = False

    def manifest(self) -> dict:
        manifest = {**super().manifest(), "streaming": self.streaming}
        if self.streaming:
            manifest["stats"] = {}  # only a prefix of the stream was counted
        return manifest


def _materialise(docs: Iterable[str], tokenizer, data: TextDataArgs, split: str):
    import datasets

    stats = TextStats()
    rows = list(blocks(docs, tokenizer, data.block_size, stats))
    if not rows:
        raise DataError(f"no {split} text left (every row was empty or skipped)")
    return datasets.Dataset.from_list(rows), stats


def stream_documents(data: TextDataArgs, bad: BadRowLog) -> Iterator[str]:
    """Documents of every training source in order, read lazily."""
    for spec in as_list(data.train_file):
        yield from documents(iter_source(spec, bad, data.txt_documents, streaming=True), data.text_fields, bad)


def build_text_data(data: TextDataArgs, tokenizer, seed: int, preview_blocks: int = 0) -> BuiltText:
    """Training (in memory or streamed) and evaluation blocks; `preview_blocks` of training kept for the preview."""
    import datasets

    bad = BadRowLog(data.bad_rows)
    stats: dict[str, TextStats] = {}
    if data.streaming:
        eval_rows = [row for spec in as_list(data.eval_file) for row in iter_source(spec, bad, data.txt_documents)]

        def generate():
            yield from blocks(stream_documents(data, bad), tokenizer, data.block_size, TextStats())

        train = datasets.IterableDataset.from_generator(generate)
        preview_stats = TextStats(partial=True)
        head = blocks(stream_documents(data, bad), tokenizer, data.block_size, preview_stats)
        first = [block for _, block in zip(range(max(preview_blocks, 1)), head)]
        if not first:
            raise DataError("no training text in the stream (every row was empty or skipped)")
        stats[TRAIN] = preview_stats
    else:
        train_rows, eval_rows = load_rows(data, seed, bad, data.txt_documents)
        train, stats[TRAIN] = _materialise(documents(train_rows, data.text_fields, bad), tokenizer, data, TRAIN)
        first = [train[i] for i in range(min(preview_blocks, len(train)))]
    evaluation = None
    if eval_rows:
        evaluation, stats[EVAL] = _materialise(documents(eval_rows, data.text_fields, bad), tokenizer, data, EVAL)
    preview = [{"text": tokenizer.decode(block["input_ids"]), "input_ids": block["input_ids"],
                "labels": block_labels(block, data.isolate_documents)} for block in first[:preview_blocks]]
    return BuiltText(train, evaluation, stats, bad, fingerprints(data), preview, streaming=data.streaming)
