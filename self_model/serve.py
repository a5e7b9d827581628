"""Serve an output directory behind an OpenAI-compatible API: `vllm serve` on a GPU (an adapter served on its base
as a LoRA module) or `transformers serve` on CPU. The command is built from the run's files (weights, tokenizer,
chat template, stop tokens in generation_config.json), printed, and then replaces this process.

    self-model-serve --model checkpoints/sft [--backend vllm] [--host 127.0.0.1] [--port 8000] [-- extra flags]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import socket
import sys
from pathlib import Path

from self_model.errors import UserError, exit_on_user_error
from self_model.generation import BACKENDS
from self_model.outputs import DTYPES, OutputDir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve an output directory with an OpenAI-compatible API.",
                                     epilog="Flags after `--` go to the server unchanged (see `vllm serve --help`, "
                                            "`transformers serve --help`).")
    parser.add_argument("--model", required=True, help="output directory (full model; vllm also serves an adapter)")
    parser.add_argument("--base", help="base model of an adapter (default: the one in its manifest)")
    parser.add_argument("--backend", choices=BACKENDS, default="transformers",
                        help="transformers (`transformers serve`, CPU or GPU) or vllm (`vllm serve`, GPU)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="auto")
    parser.add_argument("--name", help="model name clients send (vllm; default: the directory's name)")
    parser.add_argument("--print_command", action="store_true", help="print the server command and exit")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- flags passed to the server")
    return parser


def check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on, before any model is loaded."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is already in use; choose another --port") from None
            raise UserError(f"cannot listen on {host}:{port} ({err.strerror}); check --host and --port") from None


SERVERS = {  # backend -> (module run with this Python, packages it needs, the extra that installs them)
    "transformers": ("transformers.cli.transformers", ("fastapi", "uvicorn", "openai"), "serve"),
    "vllm": ("vllm.entrypoints.cli.main", ("vllm",), "gpu"),
}


def server(backend: str) -> list[str]:
    """The server's command line start: this environment's Python running the library's own CLI module (through
    `self_model.server_process`, which keeps the tokenizer's saved class)."""
    return [sys.executable, "-m", "self_model.server_process", SERVERS[backend][0], "serve"]


def check_installed(backend: str) -> None:
    import importlib.util

    _, packages, extra = SERVERS[backend]
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"--backend {backend} needs {', '.join(missing)}: install the {extra} extra "
                        f"(`uv sync --extra {extra}`)")


def transformers_command(output: OutputDir, args) -> list[str]:
    """`transformers serve` pinned to the model; it renders with the saved chat_template and stops on the
    generation_config's eos_token_id (the template's end-of-turn tokens, written by the stage)."""
    if output.is_adapter:
        raise UserError(f"{output.path} is an adapter; `transformers serve` loads full models: merge it first "
                        f"(self-model-merge --adapter {output.path} --output_dir DIR) or use --backend vllm")
    return [*server("transformers"), output.path, "--host", args.host, "--port", str(args.port),
            "--dtype", args.dtype if args.dtype == "auto" else DTYPES[args.dtype]]


def vllm_command(output: OutputDir, args) -> list[str]:
    """`vllm serve` with the run's tokenizer, chat template and generation config; an adapter as a LoRA module."""
    path = Path(output.path)
    name = args.name or output.name
    command = [*server("vllm"), output.base or output.path, "--host", args.host, "--port", str(args.port),
               "--tokenizer", output.path, "--dtype", DTYPES[args.dtype]]
    if (path / "chat_template.jinja").is_file():
        command += ["--chat-template", str(path / "chat_template.jinja")]
    if (path / "generation_config.json").is_file():
        command += ["--generation-config", output.path]  # the stop tokens the stage wrote
    if output.is_adapter:
        rank = json.loads((path / "adapter_config.json").read_text())["r"]
        command += ["--enable-lora", "--lora-modules", f"{name}={output.path}", "--max-lora-rank", str(max(8, rank))]
    else:
        command += ["--served-model-name", name]
    return command


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = OutputDir.open(args.model, args.base)
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    build = vllm_command if args.backend == "vllm" else transformers_command
    command = [*build(output, args), *extra]
    print(shlex.join(command), flush=True)
    if args.print_command:
        return 0
    check_installed(args.backend)
    check_port(args.host, args.port)
    model_name = output.path if args.backend == "transformers" else (args.name or output.name)
    print(f"serving at http://{args.host}:{args.port}/v1 as model {model_name!r}", flush=True)
    os.execv(sys.executable, command)
    return 0  # not reached: the server replaced this process


if __name__ == "__main__":
    sys.exit(main())
