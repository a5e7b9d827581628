"""Quantized export of a full model (a merged one for adapters) with AutoRound, written as a compressed-tensors
checkpoint that vLLM (and transformers) load. Calibration uses the run's own eval data (its config.yaml's
data.eval_file), rendered with its template, unless --calibration names a file.

    self-model-quantize --model checkpoints/sft_merged --scheme w4a16 --output_dir checkpoints/sft_w4a16
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from self_model.config import locate
from self_model.errors import UserError, exit_on_user_error
from self_model.outputs import OutputDir, finish_output, new_output_dir

# our scheme name -> AutoRound's preset: int4 weights (group 128); int8 weights with dynamic per-token int8
# activations; fp8 weights with calibrated static fp8 activation scales
SCHEMES = {"w4a16": "W4A16", "w8a8": "INT8", "fp8": "FP8_STATIC"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Quantize a model output directory for vLLM (compressed-tensors).")
    parser.add_argument("--model", required=True, help="a full model output directory (merge adapters first)")
    parser.add_argument("--scheme", required=True, choices=sorted(SCHEMES))
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--calibration", help="calibration rows (chat or text JSONL; default: the run's data.eval_file)")
    parser.add_argument("--samples", type=int, default=128, help="calibration sequences")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per calibration sequence")
    parser.add_argument("--iters", type=int, default=200,
                        help="AutoRound tuning steps per block; 0 is plain round-to-nearest (fast, less accurate)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    return parser


def calibration_file(output: OutputDir, given: str | None) -> str:
    """--calibration, else the eval file the run was trained with (its first, if several; a merged model's adapter's)."""
    if given:
        found = locate(given)
        if not Path(found.rsplit("#", 1)[0]).is_file():
            raise UserError(f"--calibration {given}: file not found")
        return found
    trained = output
    adapter = (output.manifest.get("parents") or {}).get("adapter")
    if adapter and not (Path(output.path) / "config.yaml").is_file() and Path(adapter).is_dir():
        # a merged model: its weights were trained by the adapter's run (only its config.yaml is read, so the
        # adapter's base need not be found)
        trained = OutputDir(adapter)
    eval_file = (trained.training_config().get("data") or {}).get("eval_file")
    eval_file = eval_file[0] if isinstance(eval_file, list) else eval_file
    if not eval_file or not Path(locate(eval_file).rsplit("#", 1)[0]).is_file():
        raise UserError(f"{trained.path} records no eval file that exists here (config.yaml data.eval_file: "
                        f"{eval_file}); pass --calibration FILE")
    return locate(eval_file)


def calibration_texts(path: str, output: OutputDir, tokenizer, samples: int, seqlen: int) -> list[str]:
    """Rows as the model saw them (conversations rendered with the run's template, else text), joined into
    `samples` texts of at least `seqlen` tokens (AutoRound skips shorter ones)."""
    from self_model.data.conversations import CONVERSATION_KEYS, row_to_messages
    from self_model.data.sources import BadRow, BadRowLog, read_source
    from self_model.data.text import row_text

    renderer = output.renderer(tokenizer) if output.has_template(tokenizer) else None
    texts, current, length = [], [], 0
    for row in read_source(path, BadRowLog("fail", fix_hint="remove it")):
        try:
            if renderer is None:
                raise BadRow("no template")
            text = renderer.render(row_to_messages(row.data, "auto", CONVERSATION_KEYS))[0]
        except BadRow:
            try:
                text = row_text(row, ["text"])
            except BadRow as err:
                raise UserError(f"{row.where}: {err} (calibration rows are conversations or text)") from None
        current.append(text)
        length += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if length >= seqlen:
            texts.append("\n".join(current))
            current, length = [], 0
            if len(texts) == samples:
                break
    if not texts:
        raise UserError(f"{path}: fewer than {seqlen} tokens in all; give more calibration data or a smaller --seqlen")
    return texts


def size_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = OutputDir.open(args.model)
    if output.is_adapter:
        raise UserError(f"{output.path} is an adapter: merge it first (self-model-merge --adapter {output.path} "
                        "--output_dir DIR) and quantize the merged model")
    if output.quantization():
        raise UserError(f"{output.path} is already quantized ({output.quantization()})")
    try:
        from auto_round import AutoRound
    except ImportError:
        raise UserError("quantization needs AutoRound: install the quantize extra (`uv sync --extra quantize`)") from None
    import torch

    from self_model.runs import save_manifest

    tokenizer = output.load_tokenizer()
    source = calibration_file(output, args.calibration)
    texts = calibration_texts(source, output, tokenizer, args.samples, args.seqlen)
    partial = new_output_dir(args.output_dir, args.overwrite)
    model = output.load_model(tokenizer, device="cpu")
    work = partial / "autoround"
    quantizer = AutoRound(model, tokenizer=tokenizer, scheme=SCHEMES[args.scheme], dataset=texts, iters=args.iters,
                          nsamples=len(texts), seqlen=args.seqlen, device_map=0 if torch.cuda.is_available() else "cpu")
    quantizer.quantize_and_save(str(work), format="llm_compressor")
    (written,) = [p.parent for p in work.rglob("config.json")]  # AutoRound names a subfolder after the scheme
    for item in written.iterdir():
        shutil.move(str(item), partial / item.name)
    shutil.rmtree(work)
    if (Path(output.path) / "template.json").is_file():
        shutil.copy2(Path(output.path) / "template.json", partial / "template.json")
    sizes = {"bytes": size_on_disk(partial), "source_bytes": size_on_disk(Path(output.path))}
    save_manifest(partial, "quantize", {"model_name_or_path": output.path, "parents": {"model": output.path},
                                        "scheme": args.scheme, "autoround_scheme": SCHEMES[args.scheme],
                                        "calibration": {"file": source, "samples": len(texts), "seqlen": args.seqlen,
                                                        "iters": args.iters}, "size_on_disk": sizes})
    path = finish_output(partial, args.output_dir)
    print(f"{args.scheme}: {sizes['bytes'] / 2**20:.1f} MiB on disk (from {sizes['source_bytes'] / 2**20:.1f} MiB); "
          f"saved to {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
