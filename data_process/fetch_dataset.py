"""Fetch a dataset into data_process/fetch_data/<subdir>/<org>_<name>__<split>.jsonl (one file per split).

    uv run python data_process/fetch_dataset.py --dataset_name openai/gsm8k --subset main --data_subdir grpo
    uv run python data_process/fetch_dataset.py --dataset_name ORG/NAME --data_subdir finetune --hub modelscope
    uv run python data_process/fetch_dataset.py --dataset_name path/to/file.json --data_subdir finetune

Sources: the Hugging Face hub (`datasets`), ModelScope (when the `modelscope` package is installed), or a local
file. Without network, or for an unknown name, it says so and writes nothing.
"""

from __future__ import annotations

import argparse

from data_process.fetch import HUBS, fetch
from self_model.errors import exit_on_user_error


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_name", required=True, help="ORG/NAME on the hub, or a local file")
    parser.add_argument("--data_subdir", required=True, help="subfolder, e.g. pretrain, finetune, dpo, grpo")
    parser.add_argument("--subset", help="dataset configuration (e.g. main for openai/gsm8k)")
    parser.add_argument("--split", help="one split only (default: all splits)")
    parser.add_argument("--hub", choices=HUBS, default="huggingface")
    parser.add_argument("--output_dir", default="data_process/fetch_data")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    args = parser.parse_args(argv)
    written = fetch(args.dataset_name, args.data_subdir, args.output_dir, args.hub, args.subset, args.split, args.overwrite)
    for path, rows in written.items():
        print(f"{path}: {rows} rows")


if __name__ == "__main__":
    main()
