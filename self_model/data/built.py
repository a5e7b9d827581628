"""What every data builder returns: the splits, per-split statistics, the skipped rows, source fingerprints and a
preview of the first examples with their trained tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from self_model.data.sources import BadRowLog

TRAIN, EVAL = "train", "eval"  # the two splits, named alike in every stage


class SplitStats(Protocol):
    def lines(self, split: str) -> list[str]:
        """Human-readable statistics of one split."""


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


@dataclass
class BuiltData:
    """A stage's data: `train` and `eval` (None without evaluation data) in the form its trainer reads."""

    train: Any
    eval: Any | None
    stats: dict[str, SplitStats]
    bad_rows: BadRowLog
    fingerprints: dict[str, str]
    preview: list[dict] = field(default_factory=list)  # rows of text, input_ids, labels (and a title)

    def preview_rows(self) -> list[dict]:
        """The rows --dry-run writes to preview.jsonl."""
        return self.preview

    def manifest(self) -> dict:
        """What the run manifest records about the data."""
        return {"fingerprints": self.fingerprints, "stats": {split: vars(stats) for split, stats in self.stats.items()},
                "skipped_rows": dict(self.bad_rows.counts)}
