"""Data sources: local files (JSONL, JSON, Parquet, CSV, TXT) and dataset ids, `name#N` sampling, fingerprints, and
the log of bad rows.

`iter_source` streams a source row by row (a .json file is one list and is read whole); `read_source` collects it
and applies `#N` sampling. Every row carries its location (`file:line`) so a bad row is reported where the user can
find it: with `bad_rows: fail` the first bad row stops the run, with `skip` rows are counted by reason.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from self_model.config import DataSourceArgs
from self_model.errors import DataError

FILE_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "txt"}
SAMPLE_SUFFIX = re.compile(r"^(?P<path>.+?)#(?P<n>\d+)$")
TEXT_ENCODING = "utf-8-sig"  # UTF-8, with the byte-order mark Windows editors write accepted at the start
BINARY_SIGNATURES = {b"\x1f\x8b": "gzip-compressed data", b"PK\x03\x04": "a zip archive", b"PAR1": "a Parquet file",
                     b"\x28\xb5\x2f\xfd": "zstd-compressed data", b"BZh": "bzip2-compressed data",
                     b"\xff\xfe": "UTF-16 text", b"\xfe\xff": "UTF-16 text", b"\x89PNG": "a PNG image"}


class BadRow(Exception):
    """A row that cannot become an example; the message says why."""


@dataclass
class Row:
    data: Any
    where: str


@dataclass
class BadRowLog:
    """Skipped rows by reason, with the first few locations of each."""

    policy: str
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples: int = 3
    fix_hint: str = "set data.bad_rows: skip to count and skip such rows"

    def record(self, where: str, reason: str) -> None:
        if self.policy == "fail":
            raise DataError(f"{where}: {reason} (fix the row, or {self.fix_hint})")
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < self.max_examples:
            self.examples[reason].append(where)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        lines = [f"skipped {n} bad rows: {reason} (e.g. {', '.join(self.examples[reason])})" for reason, n in self.counts.items()]
        return "\n".join(lines)


def split_spec(spec: str) -> tuple[str, int | None]:
    """`path#N` -> (path, N); plain `path` -> (path, None)."""
    match = SAMPLE_SUFFIX.match(spec)
    return (match["path"], int(match["n"])) if match else (spec, None)


def as_list(specs: str | list[str] | None) -> list[str]:
    return [] if not specs else [specs] if isinstance(specs, str) else list(specs)


def check_text_file(path: Path) -> None:
    """A text data file that is in fact binary (compressed, an archive, UTF-16, ...) is named before any row is read."""
    with path.open("rb") as handle:
        head = handle.read(8192)
    kind = next((name for magic, name in BINARY_SIGNATURES.items() if head.startswith(magic)), None)
    if kind is None and b"\x00" in head:
        kind = "binary data (it contains NUL bytes)"
    if kind is not None:
        raise DataError(f"{path}: this is {kind}, not {path.suffix} text; convert it to UTF-8 {path.suffix} "
                        "(or name the file by what it holds, e.g. .parquet)")


def not_utf8(path: Path) -> DataError:
    """The first line of `path` that is not UTF-8, as a DataError (called after a decode failed)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode(TEXT_ENCODING if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                return DataError(f"{path}:{number}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                                 "save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`")
    return DataError(f"{path}: not UTF-8 text; save the file as UTF-8")


def _read_jsonl(path: Path, bad: BadRowLog) -> Iterator[Row]:
    with path.open(encoding=TEXT_ENCODING) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield Row(json.loads(line), f"{path}:{number}")
            except json.JSONDecodeError as err:
                bad.record(f"{path}:{number}", f"malformed JSON ({err.msg})")


def _read_json(path: Path) -> Iterator[Row]:
    try:
        data = json.loads(path.read_text(encoding=TEXT_ENCODING))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: malformed JSON ({err.msg}); a .json file must hold one list of rows") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise DataError(f"{path}: a .json data file must hold a list of rows (use .jsonl for one row per line)")
    for index, item in enumerate(data):
        yield Row(item, f"{path}[{index}]")


def _read_table(path: Path, kind: str) -> Iterator[Row]:
    """Parquet and CSV rows, read in batches so a large file need not fit in memory."""
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
        index = 0
        for batch in table.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                yield Row(record, f"{path}:row {index}")
                index += 1
        return
    import pandas as pd

    index = 2  # line 1 is the header
    try:
        for chunk in pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=4096, encoding=TEXT_ENCODING):
            for record in chunk.to_dict(orient="records"):
                yield Row(record, f"{path}:row {index}")
                index += 1
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{path}: not a readable CSV file ({str(err).strip().splitlines()[0]})") from None


def _read_txt(path: Path, documents: str) -> Iterator[Row]:
    """Plain text as `{"text": document}` rows: one per non-empty line, or per block of lines separated by blank lines."""
    with path.open(encoding=TEXT_ENCODING) as handle:
        block, start = [], 0
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if documents == "line":
                if line.strip():
                    yield Row({"text": line}, f"{path}:{number}")
            elif line.strip():
                block, start = [*block, line], start or number
            elif block:
                yield Row({"text": "\n".join(block)}, f"{path}:{start}")
                block, start = [], 0
        if block:
            yield Row({"text": "\n".join(block)}, f"{path}:{start}")


def _read_hub(name: str, streaming: bool = False) -> Iterator[Row]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split="train", streaming=streaming)
    except Exception as err:  # no network, unknown name, missing config: all end the same way for the user
        raise DataError(
            f"{name}: not a local file and could not be loaded as a dataset id ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). Check the path, or download the dataset first."
        ) from None
    for index, record in enumerate(dataset):
        yield Row(record, f"{name}[{index}]")


def iter_source(name: str, bad: BadRowLog, txt_documents: str = "line", streaming: bool = False) -> Iterator[Row]:
    """The rows of one local file or dataset id, in order, read lazily where the format allows; malformed JSONL lines go to `bad`."""
    path = Path(name)
    if path.is_file():
        kind = FILE_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .json, .parquet, .csv or .txt)")
        if kind == "parquet":
            yield from _read_table(path, kind)
            return
        check_text_file(path)
        try:
            if kind == "txt":
                yield from _read_txt(path, txt_documents)
            elif kind == "json":
                yield from _read_jsonl(path, bad) if path.suffix.lower() == ".jsonl" else _read_json(path)
            else:
                yield from _read_table(path, kind)
        except UnicodeDecodeError:
            raise not_utf8(path) from None
    elif path.exists():
        raise DataError(f"{path}: is a directory; name the data files inside it")
    else:
        yield from _read_hub(name, streaming)


def read_source(spec: str, bad: BadRowLog, seed: int = 0, txt_documents: str = "line") -> list[Row]:
    """All rows of one source; `#N` draws N rows with a fixed seed (repeating rows when N exceeds the size)."""
    name, count = split_spec(spec)
    rows = list(iter_source(name, bad, txt_documents))
    if not rows:
        raise DataError(f"{name}: no rows")
    if count is not None:
        rng = random.Random(seed)
        if count <= len(rows):
            rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), count))]
        else:
            rows = rows * (count // len(rows)) + [rows[i] for i in sorted(rng.sample(range(len(rows)), count % len(rows)))]
    return rows


def fingerprint(spec: str) -> str:
    """A content hash of a local source (sha256 of its bytes), or the spec itself for a dataset id."""
    name, _ = split_spec(spec)
    path = Path(name)
    if not path.is_file():
        return f"dataset-id:{spec}"
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def fingerprints(data: DataSourceArgs) -> dict[str, str]:
    """The fingerprint of every training and evaluation source."""
    return {spec: fingerprint(spec) for spec in as_list(data.train_file) + as_list(data.eval_file)}


def load_rows(data: DataSourceArgs, seed: int, bad: BadRowLog, txt_documents: str = "line") -> tuple[list[Row], list[Row]]:
    """Training and evaluation rows: mixed sources, eval from eval_file or a seeded split."""
    train = [row for spec in as_list(data.train_file) for row in read_source(spec, bad, seed, txt_documents)]
    evaluation = [row for spec in as_list(data.eval_file) for row in read_source(spec, bad, seed, txt_documents)]
    if data.eval_split and not evaluation:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, round(len(train) * data.eval_split))
        held_out = set(order[:n_eval])
        evaluation = [row for i, row in enumerate(train) if i in held_out]
        train = [row for i, row in enumerate(train) if i not in held_out]
    return train, evaluation
