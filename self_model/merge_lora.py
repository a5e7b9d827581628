"""Merge a LoRA/DoRA adapter into its base: a full model directory with tokenizer, template and a manifest naming
both parents, usable as any stage's model_name_or_path and by infer/evaluate/serve/quantize.

    self-model-merge --adapter checkpoints/sft_lora --output_dir checkpoints/sft_merged [--base PATH] [--dtype bf16]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from self_model.errors import UserError, exit_on_user_error
from self_model.outputs import DTYPES, OutputDir, finish_output, new_output_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Merge an adapter output directory into its base model.")
    parser.add_argument("--adapter", required=True, help="output_dir of a LoRA/DoRA/QLoRA run (adapter_config.json)")
    parser.add_argument("--base", help="base model directory or hub id (default: the one in the adapter's manifest)")
    parser.add_argument("--output_dir", required=True, help="where the merged model is written")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="auto",
                        help="dtype of the merged weights (auto: the base checkpoint's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    return parser


def merge(adapter: OutputDir, output_dir: str, dtype: str = "auto", overwrite: bool = False) -> Path:
    """Merge the adapter into its base and save the full model; returns the output directory."""
    from self_model.modeling import set_stop_tokens
    from self_model.runs import save_manifest

    tokenizer = adapter.load_tokenizer()
    renderer = adapter.renderer(tokenizer) if adapter.has_template(tokenizer) else None
    partial = new_output_dir(output_dir, overwrite)
    model = adapter.load_model(tokenizer, dtype=dtype, device="cpu").merge_and_unload()
    model.config.use_cache = True  # training saved it off; the merged model is for inference and further stages
    if renderer is not None:
        set_stop_tokens(model, tokenizer, renderer.stop_words(tokenizer))
    model.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    if (Path(adapter.path) / "template.json").is_file():
        shutil.copy2(Path(adapter.path) / "template.json", partial / "template.json")
    parents = {"adapter": adapter.path, "base": adapter.base}
    save_manifest(partial, "merge", {"model_name_or_path": adapter.base, "parents": parents, "dtype": str(model.dtype),
                                     "adapter_stage": adapter.manifest.get("stage"),
                                     "adapter_metrics": adapter.manifest.get("metrics", {})})
    return finish_output(partial, output_dir)


def check_adapter(adapter: OutputDir) -> None:
    """Refuse what cannot be merged exactly: a full model, or a base whose weights are stored quantized."""
    if not adapter.is_adapter:
        raise UserError(f"--adapter {adapter.path} is a full model, not an adapter: nothing to merge")
    method = adapter.quantization()
    if method:
        raise UserError(f"the base {adapter.base} stores {method}-quantized weights, which cannot hold the merged sum "
                        "exactly; pass --base with the full-precision checkpoint it was quantized from")


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    adapter = OutputDir.open(args.adapter, args.base)
    check_adapter(adapter)
    if (adapter.training_config().get("peft") or {}).get("method") == "qlora":
        print("note: a QLoRA adapter was trained on 4-bit weights; it is merged into the full-precision base, so the "
              "merged model differs slightly from the 4-bit base + adapter", flush=True)
    path = merge(adapter, args.output_dir, args.dtype, args.overwrite)
    print(f"merged {adapter.path} into {adapter.base}; saved to {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
