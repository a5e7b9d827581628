"""Generation and scoring behind one interface, on transformers (CPU or GPU, batched) or vLLM (GPU, adapters served
directly): prompts are token ids rendered with the run's template, generation stops on its stop tokens, and both
engines give the same greedy text and the log-probabilities perplexity needs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from self_model.errors import UserError
from self_model.modeling import stop_token_ids
from self_model.outputs import OutputDir
from self_model.template import Renderer

BACKENDS = ("transformers", "vllm")


@dataclass
class Sampling:
    """How to pick tokens; temperature 0 is greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    n: int = 1
    seed: int = 0

    def problems(self) -> list[str]:
        found = []
        if self.max_new_tokens < 1:
            found.append(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            found.append(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            found.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.n < 1:
            found.append(f"samples must be at least 1, got {self.n}")
        if self.n > 1 and self.temperature == 0:
            found.append(f"{self.n} samples per prompt need a temperature above 0 (greedy gives one answer)")
        return found


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finished: bool  # ended on a stop token (False: max_new_tokens reached)


class Engine(ABC):
    """A loaded model with its tokenizer, template and stop tokens."""

    def __init__(self, output: OutputDir, tokenizer, renderer: Renderer | None):
        self.output, self.tokenizer, self.renderer = output, tokenizer, renderer
        self.stop_ids = stop_token_ids(tokenizer, renderer.stop_words(tokenizer) if renderer else [])

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation rendered with the run's template, ending in the assistant's generation prompt."""
        text, _ = self.renderer.render(messages, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _finish(self, prompt: list[int], generated: list[int]) -> Completion:
        """Cut the generated ids after the first stop token; decode the text before it."""
        end = next((i for i, token in enumerate(generated) if token in self.stop_ids), None)
        kept = generated if end is None else generated[:end]
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(text, len(prompt), len(generated) if end is None else end + 1, end is not None)

    @abstractmethod
    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        """`sampling.n` completions for each prompt."""

    def stream(self, prompt: list[int], sampling: Sampling) -> Iterator[str]:
        """The reply's text piece by piece (engines that cannot stream yield it whole)."""
        yield self.generate([prompt], sampling)[0][0].text

    @abstractmethod
    def token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """For each sequence, the log-probability of tokens 1.. given the tokens before them."""


class TransformersEngine(Engine):
    def __init__(self, output: OutputDir, tokenizer, renderer: Renderer | None, dtype: str = "auto",
                 batch_size: int = 8):
        super().__init__(output, tokenizer, renderer)
        self.model = output.load_model(tokenizer, dtype=dtype)
        self.batch_size = batch_size

    def _batch(self, sequences: list[list[int]], left: bool = True):
        """Padded tensors of `sequences` on the model's device: left padding for generation, right padding for
        scoring (where positions then count from each sequence's first token)."""
        import torch

        width = max(map(len, sequences))
        pad = self.tokenizer.pad_token_id
        rows = [([pad] * (width - len(s)) + s) if left else (s + [pad] * (width - len(s))) for s in sequences]
        masks = [([0] * (width - len(s)) + [1] * len(s)) if left else ([1] * len(s) + [0] * (width - len(s)))
                 for s in sequences]
        return torch.tensor(rows, device=self.model.device), torch.tensor(masks, device=self.model.device)

    def _generate_kwargs(self, sampling: Sampling) -> dict:
        greedy = sampling.temperature == 0
        return {"max_new_tokens": sampling.max_new_tokens, "do_sample": not greedy,
                "num_return_sequences": sampling.n, "eos_token_id": self.stop_ids,
                "pad_token_id": self.tokenizer.pad_token_id, "repetition_penalty": sampling.repetition_penalty,
                **({} if greedy else {"temperature": sampling.temperature, "top_p": sampling.top_p,
                                      "top_k": sampling.top_k or None})}

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        import torch
        from transformers import set_seed

        set_seed(sampling.seed)
        results = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start:start + self.batch_size]
            ids, mask = self._batch(chunk)
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=mask, **self._generate_kwargs(sampling))
            generated = out[:, ids.shape[1]:].tolist()
            for i, prompt in enumerate(chunk):
                results.append([self._finish(prompt, generated[i * sampling.n + j]) for j in range(sampling.n)])
        return results

    def stream(self, prompt: list[int], sampling: Sampling) -> Iterator[str]:
        import threading

        import torch
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        ids, mask = self._batch([prompt])
        kwargs = {**self._generate_kwargs(sampling), "num_return_sequences": 1}

        def run():
            with torch.no_grad():
                self.model.generate(input_ids=ids, attention_mask=mask, streamer=streamer, **kwargs)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from streamer
        worker.join()

    def token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        import torch

        results = []
        for start in range(0, len(sequences), self.batch_size):
            chunk = sequences[start:start + self.batch_size]
            ids, mask = self._batch(chunk, left=False)
            with torch.no_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
            picked = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
            for row, sequence in zip(picked.tolist(), chunk):
                results.append(row[:len(sequence) - 1])
        return results


class VLLMEngine(Engine):
    """vLLM's offline engine; an adapter is served on its base through vLLM's LoRA support."""

    def __init__(self, output: OutputDir, tokenizer, renderer: Renderer | None, dtype: str = "auto",
                 max_model_len: int | None = None, seed: int = 0, **vllm_args):
        super().__init__(output, tokenizer, renderer)
        try:
            from vllm import LLM
        except ImportError:
            raise UserError("--backend vllm needs vLLM: install the gpu extra (`uv sync --extra gpu`) on a CUDA "
                            "machine, or use --backend transformers") from None
        from self_model.outputs import DTYPES

        lora = {}
        if output.is_adapter:
            import json
            from pathlib import Path

            rank = json.loads((Path(output.path) / "adapter_config.json").read_text())["r"]
            lora = {"enable_lora": True, "max_lora_rank": max(8, rank), "max_loras": 1}
        self.llm = LLM(model=output.base or output.path, tokenizer=output.path, dtype=DTYPES[dtype], seed=seed,
                       max_model_len=max_model_len, **lora, **vllm_args)
        self.lora = None
        if output.is_adapter:
            from vllm.lora.request import LoRARequest

            self.lora = LoRARequest("adapter", 1, output.path)

    def _params(self, sampling: Sampling, **extra):
        from vllm import SamplingParams

        return SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                              top_k=sampling.top_k or -1, repetition_penalty=sampling.repetition_penalty,
                              max_tokens=sampling.max_new_tokens, stop_token_ids=self.stop_ids, seed=sampling.seed,
                              **extra)

    def _run(self, sequences: list[list[int]], params):
        from vllm.inputs import TokensPrompt

        return self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, lora_request=self.lora,
                                 use_tqdm=False)

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        outputs = self._run(prompts, self._params(sampling))
        return [[self._finish(prompt, list(choice.token_ids)) for choice in out.outputs]
                for prompt, out in zip(prompts, outputs)]

    def token_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        outputs = self._run(sequences, self._params(Sampling(max_new_tokens=1), prompt_logprobs=0))
        return [[entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], sequence[1:])]
                for out, sequence in zip(outputs, sequences)]


def open_engine(output: OutputDir, backend: str = "transformers", template: str | None = None, dtype: str = "auto",
                batch_size: int = 8, chat: bool = True, seed: int = 0, max_model_len: int | None = None,
                **vllm_args) -> Engine:
    """Tokenizer, template and model of an output directory on the chosen backend (`chat`: a template is needed;
    `vllm_args`: more `vllm.LLM` arguments, e.g. enforce_eager)."""
    tokenizer = output.load_tokenizer()
    renderer = output.renderer(tokenizer, template) if chat or output.has_template(tokenizer) or template else None
    if backend == "vllm":
        return VLLMEngine(output, tokenizer, renderer, dtype, max_model_len=max_model_len, seed=seed, **vllm_args)
    return TransformersEngine(output, tokenizer, renderer, dtype, batch_size)
