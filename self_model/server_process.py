"""The process `self-model-serve` replaces itself with: runs a server's CLI module (`python -m self_model.server_process
MODULE ARGS...`) after making transformers load tokenizers as they were saved. `transformers serve` and `vllm serve`
load the tokenizer with `AutoTokenizer`, which next to a Qwen2 config.json would swap a `TokenizersBackend` tokenizer
(the tokenizer stage's) for Qwen2Tokenizer and tokenize chats differently from training."""

import runpy
import sys

from self_model.modeling import honour_saved_tokenizer_class


def main() -> None:
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    honour_saved_tokenizer_class()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
