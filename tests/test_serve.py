"""serve: `transformers serve` on an output directory answers the official openai client (completion, streaming,
stop at the template's end token) and shuts down; a busy port, an adapter on the CPU server and the vLLM command
built from the run's files."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from self_model.merge_lora import main as merge_main
from self_model.serve import main as serve_main
from tests.helpers import REPO, script_env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(port: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("the server did not come up")


@pytest.fixture(scope="module")
def merged(tiny_outputs, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "merged"
    assert merge_main(["--adapter", str(tiny_outputs["lora"]), "--output_dir", str(path)]) == 0
    return path


def test_openai_client_against_transformers_serve(merged, tiny_outputs, tmp_path, capsys):
    openai = pytest.importorskip("openai")
    from transformers import AutoTokenizer

    from self_model.modeling import load_saved_tokenizer

    port = free_port()
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "self_model.serve", "--model", str(merged), "--port", str(port)],
                               cwd=REPO, env=script_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(port, process)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        ask = {"model": str(merged), "messages": [{"role": "user", "content": "What is 3 + 4?"}], "max_tokens": 4,
               "temperature": 0}
        reply = client.chat.completions.create(**ask)
        text = reply.choices[0].message.content
        assert text and reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 4
        trained = load_saved_tokenizer(str(merged)).apply_chat_template(  # the server tokenizes as training did
            ask["messages"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert reply.usage.prompt_tokens == len(trained)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(**ask, stream=True)
                           if chunk.choices)
        assert streamed == text

        end = AutoTokenizer.from_pretrained(merged).convert_tokens_to_ids("<|im_end|>")
        forced = client.chat.completions.create(**ask, logit_bias={str(end): 100.0})  # the model now ends its turn
        assert forced.choices[0].finish_reason == "stop" and forced.usage.completion_tokens == 1
        assert forced.choices[0].message.content == ""

        with pytest.raises(SystemExit) as exit_info:  # the port is taken by the running server
            serve_main(["--model", str(merged), "--port", str(port)])
        assert exit_info.value.code == 2 and f"port {port} on 127.0.0.1 is already in use" in capsys.readouterr().err
    finally:
        process.terminate()
        assert process.wait(timeout=60) is not None
        log.close()


def test_adapter_and_vllm_command(tiny_outputs, capsys):
    adapter = str(tiny_outputs["lora"])
    with pytest.raises(SystemExit) as exit_info:
        serve_main(["--model", adapter])
    assert exit_info.value.code == 2 and "merge it first" in capsys.readouterr().err

    assert serve_main(["--model", adapter, "--backend", "vllm", "--port", "9001", "--print_command", "--",
                       "--max-model-len", "512"]) == 0
    command = shlex.split(capsys.readouterr().out.splitlines()[0])
    assert command[:6] == [sys.executable, "-m", "self_model.server_process", "vllm.entrypoints.cli.main", "serve",
                           str(tiny_outputs["base"])]
    flags = dict(zip(command[6::2], command[7::2]))
    assert flags["--tokenizer"] == adapter and flags["--chat-template"] == f"{adapter}/chat_template.jinja"
    assert "--enable-lora" in command and f"lora={adapter}" in command and command[-2:] == ["--max-model-len", "512"]
