"""The run report: rows in, removed by each step, out; examples of removed rows; a length histogram.

Saved next to the output as report.json (everything, for scripts), report.md (for people) and
length_histogram.png. Memory stays fixed: a few examples per step and histogram counts, not the lengths.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from self_model.data.sources import BadRowLog

STEPS = {
    "conversation": "empty or one-sided (no reply, no prompt, chosen equal to rejected)",
    "length": "too few or too many characters",
    "tokens": "too few or too many tokens",
    "char_ratio": "letter / digit / symbol shares",
    "repeated_ngrams": "repeated n-grams",
    "bad_words": "bad words",
    "script": "share of letters in the allowed scripts",
    "decontaminate": "n-gram shared with the eval set",
    "exact_dup": "identical to an earlier row",
    "near_dup": "near-duplicate of an earlier row (MinHash LSH)",
}
LENGTH_EDGES = [0] + [round(2 ** (i / 2)) for i in range(2, 49)]  # half-octave bins from 2 to 16M characters
PREVIEW_CHARS = 300


@dataclass
class Report:
    """Counts and examples gathered while the pipeline runs."""

    kind: str
    examples_per_step: int
    malformed: BadRowLog
    not_in_schema: BadRowLog
    rows_read: int = 0
    removed: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict]] = field(default_factory=dict)
    written: Counter = field(default_factory=Counter)
    normalised: int = 0
    redacted: Counter = field(default_factory=Counter)
    lengths_in: list[int] = field(default_factory=lambda: [0] * len(LENGTH_EDGES))
    lengths_out: list[int] = field(default_factory=lambda: [0] * len(LENGTH_EDGES))

    def remove(self, step: str, where: str, reason: str, text: str, length: int, duplicate_of: str = "") -> None:
        self.removed[step] += 1
        _count_length(self.lengths_in, length)
        examples = self.examples.setdefault(step, [])
        if len(examples) < self.examples_per_step:
            example = {"where": where, "reason": reason, "text": text[:PREVIEW_CHARS]}
            examples.append({**example, "duplicate_of": duplicate_of} if duplicate_of else example)

    def keep(self, length: int, split: str) -> None:
        self.written[split] += 1
        _count_length(self.lengths_in, length)
        _count_length(self.lengths_out, length)

    def check_balance(self) -> None:
        """Every row read is written or accounted for by exactly one step; anything else is a bug here."""
        accounted = self.not_in_schema.total + sum(self.removed.values()) + sum(self.written.values())
        if accounted != self.rows_read:
            raise RuntimeError(f"rows read {self.rows_read} != rows removed or written {accounted}: rows were lost")

    def as_dict(self, settings: dict) -> dict:
        return {
            "kind": self.kind,
            "rows_in": self.rows_read + self.malformed.total,
            "malformed": _bad_rows(self.malformed),
            "not_in_schema": _bad_rows(self.not_in_schema),
            "removed": {step: self.removed[step] for step in STEPS if step in self.removed},
            "out": {"train": self.written["train"], "validation": self.written["validation"]},
            "rows_changed_by_normalisation": self.normalised,
            "pii_redacted": dict(self.redacted),
            "length_histogram": {"edges": LENGTH_EDGES, "in": self.lengths_in, "out": self.lengths_out},
            "examples": self.examples,
            "settings": settings,
        }

    def lines(self) -> list[str]:
        """The counts as short lines for the terminal."""
        total_in = self.rows_read + self.malformed.total
        lines = [f"rows in: {total_in} ({self.kind})"]
        if self.malformed.total:
            lines.append(f"  malformed lines: {self.malformed.total}")
        if self.not_in_schema.total:
            lines.append(f"  not in the {self.kind} schema: {self.not_in_schema.total}")
        lines += [f"  removed by {step}: {self.removed[step]}" for step in STEPS if self.removed[step]]
        lines.append(f"rows out: {self.written['train']} train + {self.written['validation']} validation")
        return lines

    def save(self, directory: Path, settings: dict) -> None:
        data = self.as_dict(settings)
        (directory / "report.json").write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        (directory / "report.md").write_text(_markdown(data, self.lines()), encoding="utf-8")
        plot_lengths(directory / "length_histogram.png", self.lengths_in, self.lengths_out)


def _count_length(counts: list[int], length: int) -> None:
    if length >= 0:
        counts[bisect.bisect_right(LENGTH_EDGES, length) - 1] += 1


def _bad_rows(log: BadRowLog) -> dict:
    return {"count": log.total, "by_reason": {r: {"count": n, "examples": log.examples[r]} for r, n in log.counts.items()}}


def _markdown(data: dict, lines: list[str]) -> str:
    out = ["# data_process report", "", "```", *lines, "```", "", "| step | what it removes | rows |", "|---|---|---|"]
    out += [f"| {step} | {STEPS[step]} | {count} |" for step, count in data["removed"].items()]
    for title, key in (("Malformed lines", "malformed"), ("Rows not in the schema", "not_in_schema")):
        if data[key]["count"]:
            out += ["", f"## {title}", ""]
            out += [f"- {reason}: {v['count']} (e.g. {', '.join(v['examples'])})" for reason, v in data[key]["by_reason"].items()]
    if data["pii_redacted"]:
        out += ["", "PII replaced: " + ", ".join(f"{kind} {n}" for kind, n in data["pii_redacted"].items())]
    out += ["", f"Rows changed by normalisation: {data['rows_changed_by_normalisation']}", "", "![lengths](length_histogram.png)"]
    for step, examples in data["examples"].items():
        out += ["", f"## Removed by {step}", ""]
        for example in examples:
            of = f" (copy of {example['duplicate_of']})" if "duplicate_of" in example else ""
            out.append(f"- `{example['where']}`{of}: {example['reason']}\n\n  > {example['text'][:200]!r}")
    return "\n".join(out) + "\n"


def plot_lengths(path: Path, lengths_in: list[int], lengths_out: list[int]) -> None:
    """Step histograms of row lengths (characters, log scale) before the filters and in the output."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    used = [i for i, count in enumerate(lengths_in) if count] or [0]
    first, last = used[0], used[-1] + 1  # plot only the bins that hold rows
    edges = [max(edge, 1) for edge in LENGTH_EDGES] + [LENGTH_EDGES[-1] * 2]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    shown = edges[first : last + 1]
    axes.stairs(lengths_in[first:last], shown, label=f"converted rows ({sum(lengths_in)})")
    axes.stairs(lengths_out[first:last], shown, label=f"written rows ({sum(lengths_out)})", fill=True, alpha=0.5)
    axes.set_xscale("log")
    axes.set_xlabel("characters per row (all texts of the row)")
    axes.set_ylabel("rows")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
