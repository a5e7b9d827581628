"""Talk to a trained model: an interactive chat (streamed replies, multi-turn history, /clear, /exit), or batch
generation over a JSONL of prompts (any SFT row format) into a JSONL of prompt, response and token counts.

    self-model-infer --model checkpoints/sft                                   # chat in the terminal
    self-model-infer --model checkpoints/sft --input prompts.jsonl --output replies.jsonl [--backend vllm]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from self_model.errors import UserError, exit_on_user_error
from self_model.generation import BACKENDS, Engine, Sampling, open_engine
from self_model.outputs import DTYPES, OutputDir

CHAT_HELP = "commands: /clear forgets the conversation, /exit (or Ctrl-D) quits"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Chat with, or batch-generate from, a training output directory.")
    parser.add_argument("--model", required=True, help="output directory (full model or adapter), or a hub id")
    parser.add_argument("--base", help="base model of an adapter (default: the one in its manifest)")
    parser.add_argument("--input", help="JSONL of prompts (any SFT row format; a final assistant turn is dropped and "
                                        "kept as `reference`); without it, an interactive chat starts")
    parser.add_argument("--output", help="JSONL written by batch generation (default: <input>.out.jsonl)")
    parser.add_argument("--backend", choices=BACKENDS, default="transformers",
                        help="transformers (CPU or GPU) or vllm (GPU; serves an adapter directly)")
    parser.add_argument("--template", help="chat template for a model without its own (built-in name or JSON file)")
    parser.add_argument("--system", help="system prompt for the chat")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="auto")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per generate call (transformers)")
    sampling = parser.add_argument_group("sampling (defaults: greedy, 512 new tokens)")
    sampling.add_argument("--max_new_tokens", type=int, default=512)
    sampling.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    sampling.add_argument("--top_p", type=float, default=1.0)
    sampling.add_argument("--top_k", type=int, default=0, help="0: no top-k cut")
    sampling.add_argument("--repetition_penalty", type=float, default=1.0)
    sampling.add_argument("--seed", type=int, default=0)
    return parser


def read_prompts(path: str) -> list[dict]:
    """Rows of a prompts file as {"prompt": messages, "reference": str | None}; a bad line names file:line."""
    from self_model.data.conversations import CONVERSATION_KEYS, as_turns, check_turns, prompt_turns
    from self_model.data.sources import BadRow, BadRowLog, read_source

    if not Path(path).is_file():
        raise UserError(f"--input {path}: file not found")
    rows = []
    for row in read_source(path, BadRowLog("fail", fix_hint="remove it")):
        try:
            if not isinstance(row.data, dict):
                raise BadRow(f"a row must be a JSON object, got {type(row.data).__name__}")
            turns = as_turns(row.data["prompt"], "prompt", "user") if "prompt" in row.data else prompt_turns(row.data, CONVERSATION_KEYS)
            reference = turns.pop()["content"] if turns and turns[-1]["role"] == "assistant" else row.data.get("output")
            check_turns(turns, "prompt", last_role="user")
        except BadRow as err:
            raise UserError(f"{row.where}: {err} (fix or remove the row)") from None
        rows.append({"prompt": turns, "reference": reference})
    return rows


def batch(engine: Engine, rows: list[dict], sampling: Sampling, output: Path, batch_size: int) -> None:
    """Generate for every row (a progress bar per batch) and write one JSONL line per prompt."""
    from tqdm import tqdm

    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as handle, tqdm(total=len(rows), unit="prompt") as progress:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            for row, (reply, *_) in zip(chunk, engine.generate([engine.prompt_ids(r["prompt"]) for r in chunk], sampling)):
                record = {"prompt": row["prompt"], "response": reply.text, "prompt_tokens": reply.prompt_tokens,
                          "completion_tokens": reply.completion_tokens,
                          "finish_reason": "stop" if reply.finished else "length"}
                if row["reference"] is not None:
                    record["reference"] = row["reference"]
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            progress.update(len(chunk))


def chat(engine: Engine, sampling: Sampling, system: str | None) -> None:
    """The terminal conversation: each reply streams as it is generated and joins the history."""
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    print(f"chatting with {engine.output.path} ({CHAT_HELP})", flush=True)
    while True:
        try:
            line = input("user> ")
        except (EOFError, KeyboardInterrupt):
            print(flush=True)
            return
        if line.strip() == "/exit":
            return
        if line.strip() == "/clear":
            history = list(start)
            print("(conversation cleared)", flush=True)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        pieces = []
        for piece in engine.stream(engine.prompt_ids(history), sampling):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": "".join(pieces)})


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.repetition_penalty,
                        seed=args.seed)
    problems = sampling.problems() + ([f"--batch_size must be at least 1, got {args.batch_size}"] if args.batch_size < 1 else [])
    if problems:
        raise UserError("; ".join(problems))
    output = OutputDir.open(args.model, args.base)
    rows = read_prompts(args.input) if args.input else None  # a bad prompts file fails before the model loads
    engine = open_engine(output, args.backend, args.template, args.dtype, args.batch_size, seed=args.seed)
    if rows is None:
        chat(engine, sampling, args.system)
        return 0
    target = Path(args.output or Path(args.input).with_suffix(".out.jsonl"))
    batch(engine, rows, sampling, target, args.batch_size)
    print(f"{len(rows)} responses written to {target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
