"""Embedding data: (query, positive, hard negatives) rows for contrastive training, and a retrieval set for evaluation.

Schema of the `embedding` kind: `{"query": str, "positive": str, "negative": [str, ...]}` (`negative` may be a
string or absent: in-batch negatives only). Training gets sentence-transformers' column layout (anchor, positive,
negative_1..negative_n); evaluation gets queries, a corpus (every positive and negative of the eval rows) and the
relevant document of each query, for recall@k and MRR.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from self_model.config import DataSourceArgs, option
from self_model.data.built import EVAL, TRAIN, BuiltData
from self_model.data.sources import BadRow, BadRowLog, Row, fingerprints, load_rows
from self_model.errors import DataError

EMBEDDING_KEYS = {"query": "query", "positive": "positive", "negative": "negative"}


@dataclass
class EmbeddingDataArgs(DataSourceArgs):
    """Query / positive / hard-negative rows."""

    query_key: str = option("Field with the query (the anchor).", "query")
    positive_key: str = option("Field with the text that answers the query.", "positive")
    negative_key: str = option("Field with hard negatives: a string or a list of strings (optional).", "negative")
    num_negatives: int | None = option(
        "Hard negatives used per row (the first ones of each row); null: the fewest any training row has. 0: in-batch "
        "negatives only.", None)
    max_length: int = option("Texts longer than this many tokens are truncated.", 256)

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.max_length < 2:
            found.append(("data.max_length", f"must be at least 2, got {self.max_length}"))
        if self.num_negatives is not None and self.num_negatives < 0:
            found.append(("data.num_negatives", f"must be 0 or more, got {self.num_negatives}"))
        return found


# ---------------------------------------------------------------- the `embedding` schema


def to_record(row: dict, keys: dict[str, str], data_source: str | None = None) -> dict:
    record = {}
    for name in ("query", "positive"):
        if not isinstance(row.get(keys[name]), str):
            raise BadRow(f"missing field {keys[name]!r} (a string)")
        record[name] = row[keys[name]]
    negatives = row.get(keys["negative"], [])
    negatives = [negatives] if isinstance(negatives, str) else negatives
    if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
        raise BadRow(f"field {keys['negative']!r} must be a string or a list of strings")
    record["negative"] = negatives
    return record


def map_texts(record: dict, fn: Callable[[str], str]) -> dict:
    return {"query": fn(record["query"]), "positive": fn(record["positive"]), "negative": [fn(n) for n in record["negative"]]}


def check_record(record: dict) -> None:
    for name in ("query", "positive"):
        if not record[name].strip():
            raise BadRow(f"empty {name}")
    if any(not n.strip() for n in record["negative"]):
        raise BadRow("empty negative")
    if record["positive"] in record["negative"]:
        raise BadRow("the positive is also a negative")


# ---------------------------------------------------------------- building


@dataclass
class EmbeddingStats:
    rows_read: int = 0
    examples: int = 0
    negatives: int = 0
    truncated_texts: int = 0

    def lines(self, split: str) -> list[str]:
        return [f"[{split}] rows read {self.rows_read}, examples {self.examples}, hard negatives per row "
                f"{self.negatives}, texts longer than max_length {self.truncated_texts}"]


@dataclass
class RetrievalSet:
    """What sentence-transformers' InformationRetrievalEvaluator reads."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]


@dataclass
class BuiltEmbedding(BuiltData):
    retrieval: RetrievalSet | None = None  # the eval rows as a retrieval task (`eval` holds them as anchor/positive)
    num_negatives: int = 0

    def manifest(self) -> dict:
        return {**super().manifest(), "num_negatives": self.num_negatives}


def _records(rows: list[Row], data: EmbeddingDataArgs, bad: BadRowLog) -> list[dict]:
    keys = {"query": data.query_key, "positive": data.positive_key, "negative": data.negative_key}
    out = []
    for row in rows:
        try:
            if not isinstance(row.data, dict):
                raise BadRow(f"a row must be a JSON object, got {type(row.data).__name__}")
            record = to_record(row.data, keys)
            check_record(record)
            if data.num_negatives and len(record["negative"]) < data.num_negatives:
                raise BadRow(f"{len(record['negative'])} hard negatives, fewer than data.num_negatives "
                             f"({data.num_negatives})")
            out.append(record)
        except BadRow as err:
            bad.record(row.where, str(err))
    return out


def retrieval_set(records: list[dict]) -> RetrievalSet:
    """Each query must find its own positive among all the eval texts (positives and negatives, deduplicated)."""
    corpus_ids: dict[str, str] = {}
    for record in records:
        for text in [record["positive"], *record["negative"]]:
            corpus_ids.setdefault(text, f"d{len(corpus_ids)}")
    queries = {f"q{i}": record["query"] for i, record in enumerate(records)}
    relevant = {f"q{i}": {corpus_ids[record["positive"]]} for i, record in enumerate(records)}
    return RetrievalSet(queries, {doc: text for text, doc in corpus_ids.items()}, relevant)


def build_embedding_data(data: EmbeddingDataArgs, tokenizer, seed: int) -> BuiltEmbedding:
    """Training rows as anchor/positive/negative_i columns, eval rows as a retrieval set."""
    import datasets

    bad = BadRowLog(data.bad_rows)
    train_rows, eval_rows = load_rows(data, seed, bad)
    records = {TRAIN: _records(train_rows, data, bad), EVAL: _records(eval_rows, data, bad)}
    if not records[TRAIN]:
        raise DataError(f"no usable train rows (rows read: {len(train_rows)}; {bad.summary()})")
    fewest = min(len(record["negative"]) for record in records[TRAIN])
    negatives = fewest if data.num_negatives is None else data.num_negatives
    stats, preview = {}, []
    for split, rows in ((TRAIN, train_rows), (EVAL, eval_rows)):
        if rows:
            texts = [t for r in records[split] for t in (r["query"], r["positive"], *r["negative"][:negatives])]
            lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]] if texts else []
            stats[split] = EmbeddingStats(len(rows), len(records[split]), negatives,
                                          sum(n > data.max_length for n in lengths))
    for record in records[TRAIN][: data.preview_examples]:
        text = "\n".join([f"query: {record['query']}", f"positive: {record['positive']}",
                          *(f"negative: {n}" for n in record["negative"][:negatives])])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        preview.append({"title": f"example {len(preview)}", "text": text, "input_ids": ids, "labels": ids})
    if eval_rows and not records[EVAL]:
        raise DataError(f"no usable eval rows (rows read: {len(eval_rows)}; {bad.summary()})")
    evaluation = datasets.Dataset.from_dict(_columns(records[EVAL], 0)) if records[EVAL] else None
    return BuiltEmbedding(datasets.Dataset.from_dict(_columns(records[TRAIN], negatives)), evaluation, stats, bad,
                          fingerprints(data), preview, retrieval=retrieval_set(records[EVAL]) if records[EVAL] else None,
                          num_negatives=negatives)


def _columns(records: list[dict], negatives: int) -> dict[str, list[str]]:
    """sentence-transformers' columns: anchor, positive, negative_1..negative_n (the loss reads them in order)."""
    columns: dict[str, list[str]] = {"anchor": [r["query"] for r in records], "positive": [r["positive"] for r in records]}
    for i in range(negatives):
        columns[f"negative_{i + 1}"] = [r["negative"][i] for r in records]
    return columns
