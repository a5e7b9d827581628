"""Clean, filter, deduplicate and split data into the schema the stages read (the steps: data_process/pipeline.py).

    uv run python data_process/process_data.py --input data_process/fetch_data/finetune/a.jsonl \\
        --output_dir data_process/final_data --subdir finetune --dedup --near_dedup
    uv run python data_process/process_data.py --config config/data_config/finetune.yaml [key=value ...]

Writes output_dir/subdir/{train,validation}.jsonl, report.json, report.md and length_histogram.png.
"""

from __future__ import annotations

import argparse

from data_process.pipeline import run
from data_process.settings import load_process_settings
from self_model.errors import exit_on_user_error


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, dict]:
    """The arguments, and the flags given as a settings layer (flags left out do not override the file)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Overrides: key=value, e.g. dedup.threshold=0.6")
    parser.add_argument("--config", help="YAML settings file (config/data_config/*.yaml)")
    parser.add_argument("--input", nargs="+", help="input files or dataset ids")
    parser.add_argument("--output_dir", help="default data_process/final_data")
    parser.add_argument("--subdir", help="subfolder of output_dir, e.g. finetune")
    parser.add_argument("--kind", help="pretrain, sft, preference, rl, classification or embedding (default: detected)")
    parser.add_argument("--processes", type=int, help="worker processes (default: one per core)")
    parser.add_argument("--dedup", action="store_true", help="remove exact duplicates")
    parser.add_argument("--near_dedup", action="store_true", help="remove near-duplicates (MinHash LSH)")
    parser.add_argument("--redact_pii", action="store_true", help="replace emails, phone and ID-card numbers")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output")
    parser.add_argument("overrides", nargs="*", help="key=value")
    args = parser.parse_args(argv)
    given = {key: getattr(args, key) for key in ("input", "output_dir", "subdir", "kind", "processes")}
    flags = {key: value for key, value in given.items() if value is not None}
    dedup = {key: True for key, given in (("exact", args.dedup), ("near", args.near_dedup)) if given}
    if dedup:
        flags["dedup"] = dedup
    if args.redact_pii:
        flags["redact_pii"] = ["email", "phone", "id_card"]
    if args.overwrite:
        flags["overwrite"] = True
    return args, flags


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args, flags = parse_args(argv)
    settings = load_process_settings(args.config, args.overrides, flags)
    report, kind_origin = run(settings)
    print(f"kind: {report.kind} ({kind_origin})")
    print("\n".join(report.lines()))
    print(f"written to {settings.destination} (report.md, report.json, length_histogram.png)")


if __name__ == "__main__":
    main()
