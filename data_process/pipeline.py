"""The processing pipeline: read -> schema -> normalise -> redact -> filter -> dedup -> split -> write, streaming.

The main process reads rows in order and sends chunks to worker processes, which convert, normalise, filter and
MinHash them (`RowProcessor`: a pure function of the row and the settings). Results come back in input order,
at most two chunks per worker in flight, and the main process alone decides duplicates (`DuplicateIndex`, on
disk) and the split (a seeded hash of the row), so the output does not depend on the number of processes.
Everything is written into a staging folder that replaces the destination only once the run has succeeded.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
import os
import shutil
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xxhash

from data_process.dedup import DuplicateIndex, Kept, MinHasher, digest64
from data_process.filters import QualityFilters, eval_ngram_hashes, load_tokenizer
from data_process.normalize import Normalizer, PiiRedactor
from data_process.report import PREVIEW_CHARS, Report
from data_process.settings import ProcessSettings
from self_model.data.schemas import SCHEMA_KEYS, check_record, detect_kind, map_texts, record_text, to_schema
from self_model.data.sources import BadRow, BadRowLog, iter_source
from self_model.errors import DataError, UserError

KIND_PROBE_ROWS = 1000  # rows looked at to detect the kind of data before giving up
FIX_HINT = "set bad_rows: skip to count and skip such rows"


class Removed(NamedTuple):
    ordinal: int
    where: str
    step: str
    reason: str
    text: str
    length: int


@dataclass
class ChunkResult:
    outcomes: list[Removed | Kept]
    normalised: int = 0
    redacted: Counter = field(default_factory=Counter)


class RowProcessor:
    """Schema conversion, normalisation, PII redaction, filters and MinHash for one chunk of rows."""

    def __init__(self, settings: ProcessSettings, kind: str, eval_hashes: np.ndarray):
        self.settings, self.kind = settings, kind
        self.keys = {**SCHEMA_KEYS, **settings.keys}
        self.normalize = Normalizer(settings.normalize)
        self.redact = PiiRedactor(settings.redact_pii)
        self.filters = QualityFilters(settings.filters, settings.decontaminate, eval_hashes)
        self.minhasher = MinHasher(settings.dedup) if settings.dedup.near else None

    def clean(self, text: str) -> str:
        return self.redact(self.normalize(text))

    def process(self, chunk: list[tuple[int, str, Any]]) -> ChunkResult:
        result = ChunkResult([])
        kept_texts = []
        for ordinal, where, data in chunk:
            try:
                record = to_schema(data, self.kind, self.keys, self.settings.data_source)
            except BadRow as err:
                result.outcomes.append(Removed(ordinal, where, "schema", str(err), "", -1))
                continue
            cleaned = map_texts(record, self.kind, self.clean)
            result.normalised += cleaned != record
            text = record_text(cleaned, self.kind)
            failure = self._failure(cleaned, text)
            if failure:
                result.outcomes.append(Removed(ordinal, where, *failure, text[:PREVIEW_CHARS], len(text)))
                continue
            line = json.dumps(cleaned, ensure_ascii=False)
            result.outcomes.append(Kept(ordinal, where, len(text), line, digest64(line.encode())))
            kept_texts.append(text)
        if self.minhasher:
            kept = [outcome for outcome in result.outcomes if isinstance(outcome, Kept)]
            for doc, (buckets, signature) in zip(kept, self.minhasher.sign(kept_texts)):
                doc.buckets, doc.signature = buckets, signature
        result.redacted, self.redact.counts = self.redact.counts, Counter()
        return result

    def _failure(self, record: dict, text: str) -> tuple[str, str] | None:
        if self.settings.filters.conversations:
            try:
                check_record(record, self.kind)
            except BadRow as err:
                return "conversation", str(err)
        return self.filters.first_failure(text)


_PROCESSOR: RowProcessor | None = None  # one per worker process, built once by _init_worker


def _init_worker(settings: ProcessSettings, kind: str, eval_hashes: np.ndarray) -> None:
    global _PROCESSOR
    _PROCESSOR = RowProcessor(settings, kind, eval_hashes)


def _process_chunk(chunk: list[tuple[int, str, Any]]) -> ChunkResult:
    return _PROCESSOR.process(chunk)


def map_in_order(chunks: Iterable[list], processes: int, init_args: tuple) -> Iterator[ChunkResult]:
    """Results of `_process_chunk` in input order, from a pool with at most two chunks per worker in flight."""
    if processes == 1:
        _init_worker(*init_args)
        yield from map(_process_chunk, chunks)
        return
    # spawn: workers start clean (no copied locks or tokenizer threads), the same on every platform
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_init_worker, initargs=init_args) as pool:
        pending: deque = deque()
        try:
            for chunk in chunks:
                pending.append(pool.submit(_process_chunk, chunk))
                if len(pending) >= 2 * processes:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(cancel_futures=True)


# ---------------------------------------------------------------- reading


def read_rows(inputs: list[str], malformed: BadRowLog) -> Iterator[tuple[int, str, Any]]:
    """(ordinal, file:line, row) for every row of every input, in order; malformed lines go to `malformed`."""
    rows = (row for spec in inputs for row in iter_source(spec, malformed))
    for ordinal, row in enumerate(rows):
        yield ordinal, row.where, row.data


def resolve_kind(settings: ProcessSettings, rows: Iterator[tuple[int, str, Any]]) -> tuple[str, str, Iterator]:
    """(kind, how it was chosen, the rows again): the configured kind, or the kind of the first row that shows one."""
    if settings.kind != "auto":
        return settings.kind, "set in the config", rows
    keys = {**SCHEMA_KEYS, **settings.keys}
    probed = []
    for ordinal, where, data in itertools.islice(rows, KIND_PROBE_ROWS):
        probed.append((ordinal, where, data))
        try:
            return detect_kind(data, keys), f"detected from {where}", itertools.chain(probed, rows)
        except BadRow:
            continue
    if not probed:
        raise DataError(f"no rows in {', '.join(settings.inputs)}")
    where, data = probed[0][1], probed[0][2]
    shown = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
    raise DataError(
        f"{where}: cannot tell the kind of data from the first {len(probed)} rows (keys {shown}); "
        "set kind (pretrain, sft, preference, rl, classification, embedding), and keys to rename fields"
    )


def chunked(rows: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


# ---------------------------------------------------------------- writing


class SplitWriter:
    """train.jsonl and validation.jsonl; a row goes to validation when a seeded hash of its digest says so."""

    def __init__(self, directory: Path, validation_ratio: float, seed: int):
        self.threshold = validation_ratio * 2**64
        self.seed = seed
        self.files = {split: (directory / f"{split}.jsonl").open("w", encoding="utf-8") for split in ("train", "validation")}

    def write(self, line: str, digest: int) -> str:
        """Write one row; returns the split it went to."""
        split = "validation" if xxhash.xxh3_64_intdigest(f"{self.seed}:{digest}".encode()) < self.threshold else "train"
        self.files[split].write(line + "\n")
        return split

    def close(self) -> None:
        for handle in self.files.values():
            handle.close()


def refuse_existing(destination: Path, overwrite: bool) -> None:
    if destination.exists() and not overwrite and (destination.is_file() or any(destination.iterdir())):
        raise UserError(f"{destination} already holds output; pass --overwrite to replace it, or choose another --subdir")


def publish(staging: Path, destination: Path) -> None:
    """Move the finished staging folder into place, replacing what was there only now."""
    if destination.is_dir() and not any(destination.iterdir()):
        destination.rmdir()
    if destination.exists():
        previous = destination.with_name(f".{destination.name}.previous-{os.getpid()}")
        destination.rename(previous)
        staging.rename(destination)
        shutil.rmtree(previous) if previous.is_dir() else previous.unlink()
    else:
        staging.rename(destination)


def worker_count(settings: ProcessSettings) -> int:
    if settings.processes:
        return settings.processes
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------- the run


def run(settings: ProcessSettings) -> tuple[Report, str]:
    """Process the inputs into settings.destination; returns the report and how the kind was chosen."""
    destination = settings.destination
    refuse_existing(destination, settings.overwrite)
    malformed = _bad_row_log(settings)
    kind, kind_origin, rows = resolve_kind(settings, read_rows(settings.inputs, malformed))
    if settings.filters.tokenizer:
        load_tokenizer(settings.filters.tokenizer)  # a bad tokenizer fails here, once, not in every worker
    eval_hashes = eval_ngram_hashes(settings.decontaminate)
    report = Report(kind, settings.report_examples, malformed, _bad_row_log(settings))
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    staging.mkdir()
    try:
        _process_into(staging, settings, (settings, kind, eval_hashes), rows, report)
        report.check_balance()
        report.save(staging, dataclasses.asdict(settings))
        publish(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return report, kind_origin


def _bad_row_log(settings: ProcessSettings) -> BadRowLog:
    return BadRowLog(settings.bad_rows, max_examples=max(settings.report_examples, 1), fix_hint=FIX_HINT)


def _process_into(staging: Path, settings: ProcessSettings, init_args: tuple, rows: Iterator, report: Report) -> None:
    """Run the rows through the workers and the dedup index into staging/{train,validation}.jsonl."""
    work_dir = Path(settings.work_dir) if settings.work_dir else staging
    work_dir.mkdir(parents=True, exist_ok=True)
    index_path = work_dir / f"dedup-{os.getpid()}.sqlite"
    index = DuplicateIndex(index_path, settings.dedup) if settings.dedup.exact or settings.dedup.near else None
    writer = SplitWriter(staging, settings.validation_ratio, settings.seed)
    try:
        for result in map_in_order(chunked(rows, settings.chunk_size), worker_count(settings), init_args):
            _account(result, index, writer, report)
    finally:
        writer.close()
        if index:
            index.close()
            index_path.unlink()


def _account(result: ChunkResult, index: DuplicateIndex | None, writer: SplitWriter, report: Report) -> None:
    """Record one chunk's removals, drop its duplicates and write the survivors."""
    report.rows_read += len(result.outcomes)
    report.normalised += result.normalised
    report.redacted.update(result.redacted)
    kept = []
    for outcome in result.outcomes:
        if isinstance(outcome, Kept):
            kept.append(outcome)
        elif outcome.step == "schema":
            report.not_in_schema.record(outcome.where, outcome.reason)
        else:
            report.remove(outcome.step, outcome.where, outcome.reason, outcome.text, outcome.length)
    verdicts = index.classify(kept) if index else [None] * len(kept)
    for doc, verdict in zip(kept, verdicts):
        if verdict is None:
            report.keep(doc.length, writer.write(doc.line, doc.digest))
            continue
        step, original = verdict
        reason = "identical to an earlier row" if step == "exact_dup" else "near-duplicate of an earlier row"
        report.remove(step, doc.where, reason, doc.line, doc.length, duplicate_of=original)
