"""Fetch a dataset (Hugging Face hub, ModelScope, or a local file) into JSONL files, one per split, all or nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from self_model.data.sources import BadRowLog, iter_source
from self_model.errors import DataError, UserError

HUBS = ("huggingface", "modelscope")


def output_name(name: str, subset: str | None, split: str) -> str:
    """`org/name` -> `org_name__split.jsonl` (`org_name_subset__split.jsonl` with a subset); a local file keeps its stem."""
    stem = Path(name).stem if Path(name).exists() else name.strip("/").replace("/", "_")
    return f"{stem}_{subset}__{split}.jsonl" if subset else f"{stem}__{split}.jsonl"


def load_splits(name: str, hub: str, subset: str | None, split: str | None) -> dict[str, Any]:
    """Split name -> a `datasets.Dataset`; a local file is one split (`split`, default train), its rows streamed."""
    if Path(name).exists():
        return {split or "train": (row.data for row in iter_source(name, BadRowLog("fail", fix_hint="fix the file")))}
    if hub == "modelscope":
        return {split or "train": _load_modelscope(name, subset, split or "train")}
    import datasets

    try:
        loaded = datasets.load_dataset(name, subset, split=split)
    except Exception as err:  # no network, unknown name, gated set, bad subset: one message for the user
        raise DataError(_load_failure(name, "the Hugging Face hub", err)) from None
    return {split: loaded} if split else dict(loaded)


def _load_modelscope(name: str, subset: str | None, split: str):
    try:
        from modelscope.msdatasets import MsDataset
    except ImportError:
        raise UserError("--hub modelscope needs the modelscope package: uv pip install modelscope") from None
    try:
        return MsDataset.load(name, subset_name=subset, split=split).to_hf_dataset()
    except Exception as err:  # as for the Hugging Face hub
        raise DataError(_load_failure(name, "ModelScope", err)) from None


def _load_failure(name: str, hub: str, err: Exception) -> str:
    detail = (str(err).strip().splitlines() or [""])[0][:300]
    offline = os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0")
    return (
        f"{name}: could not load it from {hub} ({type(err).__name__}: {detail})."
        f"{' HF_HUB_OFFLINE is set, so nothing is downloaded.' if offline else ''} Check the name (ORG/NAME) and the "
        "network (HF_ENDPOINT selects a mirror, HF_TOKEN opens gated sets), or download the files and pass a local path. "
        "Nothing was written."
    )


def fetch(
    name: str, subdir: str, output_dir: str, hub: str, subset: str | None, split: str | None, overwrite: bool
) -> dict[Path, int]:
    """Write every split of `name` as JSONL into output_dir/subdir; returns each file with its row count."""
    splits = load_splits(name, hub, subset, split)
    target = Path(output_dir) / subdir
    paths = {split_name: target / output_name(name, subset, split_name) for split_name in splits}
    existing = [str(path) for path in paths.values() if path.exists()]
    if existing and not overwrite:
        raise UserError(f"{', '.join(existing)} already exist; pass --overwrite to replace them")
    target.mkdir(parents=True, exist_ok=True)
    staging = target / f".fetch-partial-{os.getpid()}"
    staging.mkdir()
    written = {}
    try:
        for split_name, rows in splits.items():
            staged = staging / paths[split_name].name
            written[paths[split_name]] = _write_jsonl(rows, staged)
        for path in written:
            (staging / path.name).replace(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _write_jsonl(rows: Any, path: Path) -> int:
    if hasattr(rows, "to_json"):  # a datasets.Dataset: its writer works in batches
        rows.to_json(path, force_ascii=False)
        return len(rows)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count
