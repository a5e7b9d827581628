"""Tokenizer, model and PEFT construction from the shared config sections."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

from self_model.config import RunConfig
from self_model.errors import UserError

logger = logging.getLogger(__name__)


def not_available(kind: str, name: str, err: Exception) -> UserError:
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    return UserError(
        f"{kind} {name!r} is not available locally (not a directory, not in the Hugging Face cache) and could not "
        f"be fetched from the hub ({first}). Download it first (`hf download {name}`) or point to a local directory."
    )


def load_tokenizer(cfg: RunConfig):
    """The tokenizer, with a pad token that is never the EOS token (so padding can never hide a real EOS)."""
    name = cfg.tokenizer_name_or_path or cfg.model_name_or_path
    try:
        tokenizer = load_saved_tokenizer(name, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as err:
        raise not_available("tokenizer", name, err) from None
    if not tokenizer.is_fast:
        raise UserError(f"tokenizer {name!r} is not a fast tokenizer; label masking needs character offsets")
    set_distinct_pad_token(tokenizer)
    return tokenizer


def load_saved_tokenizer(name: str, **kwargs):
    """A tokenizer loaded as the class it was saved from. A directory saved from a plain `tokenizer.json` records
    `TokenizersBackend`, but next to a model's config.json transformers 5 swaps in the model family's class (e.g.
    Qwen2Tokenizer, which rebuilds the pre-tokenizer and splits numbers into digits), so a trained model would be
    reloaded with another tokenization."""
    from transformers import AutoTokenizer, TokenizersBackend

    if saved_tokenizer_class(name) == "TokenizersBackend":
        return TokenizersBackend.from_pretrained(name, **kwargs)
    return AutoTokenizer.from_pretrained(name, **kwargs)


def saved_tokenizer_class(name) -> str | None:
    """The `tokenizer_class` a local directory's tokenizer_config.json records (None for a hub name, or none)."""
    config_file = Path(name) / "tokenizer_config.json"
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text(encoding="utf-8")).get("tokenizer_class")
    except json.JSONDecodeError as err:
        raise UserError(f"{config_file}: not valid JSON ({err})") from None


def honour_saved_tokenizer_class() -> None:
    """Make `AutoTokenizer.from_pretrained` load a directory saved as `TokenizersBackend` as that class, in this
    process, for libraries that load tokenizers themselves (verl's workers, the servers); idempotent."""
    from transformers import AutoTokenizer, TokenizersBackend

    auto_loader = AutoTokenizer.from_pretrained
    if getattr(auto_loader, "honours_saved_class", False):
        return

    def from_pretrained(name, *args, **kwargs):
        if isinstance(name, str | os.PathLike) and saved_tokenizer_class(name) == "TokenizersBackend":
            return TokenizersBackend.from_pretrained(name, *args, **kwargs)
        return auto_loader(name, *args, **kwargs)

    from_pretrained.honours_saved_class = True
    AutoTokenizer.from_pretrained = staticmethod(from_pretrained)


def set_distinct_pad_token(tokenizer) -> None:
    """Use an existing unused token for padding when pad is missing or equal to EOS; add `<|pad|>` as a last resort."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    candidates = [tokenizer.unk_token] + [t for t in tokenizer.all_special_tokens if "pad" in t.lower()]
    candidates += [t for t in tokenizer.get_added_vocab() if "pad" in t.lower() or "reserved_special_token" in t]
    for token in candidates:
        if token and token != tokenizer.eos_token and token != tokenizer.bos_token:
            tokenizer.pad_token = token
            return
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    logger.warning("tokenizer had no pad token distinct from EOS: added <|pad|> (the embeddings are resized)")


def check_environment(cfg: RunConfig, training_args: dict[str, Any]) -> list[str]:
    """Adjust what this machine cannot do (fp16 without a GPU) and refuse what cannot work; return notices."""
    import torch

    notices = []
    has_cuda = torch.cuda.is_available()
    if cfg.peft.enabled and cfg.peft.method == "qlora":
        if not has_cuda:
            raise UserError("peft.method: qlora needs a CUDA GPU (bitsandbytes 4-bit); use lora on this machine")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError("peft.method: qlora needs bitsandbytes: install the gpu extra (`uv sync --extra gpu`)") from None
    if training_args.get("fp16") and not has_cuda:
        training_args["fp16"] = False
        notices.append("training_args.fp16: no GPU here, training in float32 instead")
    if not has_cuda and training_args.get("bf16") is not False:
        if training_args.get("bf16"):
            notices.append("training_args.bf16: no GPU here, training in float32 instead")
        training_args["bf16"] = False  # TRL defaults bf16 on, which transformers refuses on CPU
    if not has_cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # without use_cpu, transformers treats each CPU process as a separate single-process run (no DDP)
        training_args.setdefault("use_cpu", True)
    if training_args.get("deepspeed") and not has_cuda:
        raise UserError("training_args.deepspeed needs CUDA GPUs; remove it to train on CPU")
    return notices


def _torch_dtype(cfg: RunConfig, training_args):
    import torch

    if cfg.model.dtype != "auto":
        return getattr(torch, cfg.model.dtype)
    if cfg.peft.enabled and (training_args.bf16 or training_args.fp16):
        # frozen base weights need no float32 master copy; PEFT keeps the adapters in float32
        return torch.bfloat16 if training_args.bf16 else torch.float16
    if cfg.model.init_from_config or training_args.fp16:
        # full training in mixed precision keeps float32 master weights
        return torch.float32
    return "auto"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def packs(setting: bool | str) -> bool:
    """`data.packing` resolved: `auto` packs on a GPU."""
    return cuda_available() if setting == "auto" else bool(setting)


def attention_for(cfg: RunConfig, packed: bool) -> str:
    """`model.attn_implementation` resolved: `auto` is varlen for packed batches on a GPU, else SDPA."""
    from self_model import attention  # imports torch: after the config is validated

    name = cfg.model.attn_implementation
    if name == "auto":
        name = attention.VARLEN if packed and cuda_available() else "sdpa"
    if name == attention.VARLEN:
        attention.register()
    if name == "sdpa" and cuda_available():
        import torch

        # torch 2.11's cuDNN SDPA backward returns NaN for a query row that sees no key, as left-padded batches
        # (GKD's, GRPO's) have: a bf16 GKD LoRA run had NaN gradients at step 29 (docs/benchmarks.md, Methods)
        torch.backends.cuda.enable_cudnn_sdp(False)
    return name


def gpu_memory() -> int | None:
    """Total memory of this process's GPU, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


def speed_defaults(cfg: RunConfig) -> dict[str, Any]:
    """This project's fast defaults on a GPU, for the training_args the user leaves unset: bf16 where the chip has
    it, and Liger's fused kernels where liger-kernel is installed."""
    import torch

    if not torch.cuda.is_available():
        return {}
    defaults: dict[str, Any] = {}
    if torch.cuda.is_bf16_supported() and not cfg.training_args.get("fp16"):
        defaults["bf16"] = True
    if liger_available():
        defaults["use_liger_kernel"] = True
    return defaults


def weight_dtype(cfg: RunConfig, training_args, checkpoint_dtype: str) -> str:
    """The dtype the weights are trained in, as a name (`auto` resolved to the checkpoint's)."""
    dtype = _torch_dtype(cfg, training_args)
    return checkpoint_dtype if dtype == "auto" else str(dtype).replace("torch.", "")


def load_model(cfg: RunConfig, tokenizer, training_args, model_class=None, packed: bool = False, **config_kwargs):
    """The model: random init from model.init_from_config, or loaded (4-bit for qlora); embeddings fit the tokenizer.

    `packed`: batches hold several documents in one row (boundaries in position_ids); the attention must keep them
    apart. `config_kwargs` change the model config (e.g. num_labels=1 for a reward model's head)."""
    from transformers import AutoModelForCausalLM

    model_class = model_class or AutoModelForCausalLM
    dtype = _torch_dtype(cfg, training_args)
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code,
                              "attn_implementation": attention_for(cfg, packed)}
    try:
        model = _build(cfg, model_class, dtype, training_args, kwargs, config_kwargs)
    except ImportError as err:  # a flash_attention_* kind whose package is missing
        raise UserError(f"model.attn_implementation: {kwargs['attn_implementation']} cannot run here ({err}); "
                        "use auto, varlen or sdpa") from None
    if packed and not getattr(model, "_supports_attention_backend", False):
        raise UserError(f"{type(model).__name__} does not read document boundaries from position_ids in its attention, "
                        "so packed documents would see each other: set data.packing: false (SFT) or "
                        "data.isolate_documents: false (CPT)")
    fit_embeddings(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    # Training needs no KV cache; with one, transformers also stops reading packed position_ids for SDPA masks.
    model.config.use_cache = False
    return model


def fit_embeddings(model, tokenizer) -> None:
    """Grow the embeddings to the tokenizer (to a multiple of 64); the merge repeats this before loading adapters."""
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)


def _build(cfg: RunConfig, model_class, dtype, training_args, kwargs: dict, config_kwargs: dict):
    import torch
    from transformers import AutoConfig, set_seed

    if cfg.model.init_from_config:
        config = AutoConfig.from_pretrained(cfg.model.init_from_config, **kwargs, **config_kwargs)
        set_seed(training_args.seed)
        model = model_class.from_config(config, dtype=dtype if dtype != "auto" else torch.float32, **kwargs)
    else:
        kwargs.update(quantization(cfg, training_args))
        try:
            model = model_class.from_pretrained(cfg.model_name_or_path, dtype=dtype, **kwargs, **config_kwargs)
        except OSError as err:
            raise not_available("model", cfg.model_name_or_path, err) from None
    return model


def quantization(cfg: RunConfig, training_args) -> dict[str, Any]:
    """`from_pretrained` keywords for QLoRA's 4-bit base weights (none without qlora)."""
    if not (cfg.peft.enabled and cfg.peft.method == "qlora"):
        return {}
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.float16 if training_args.fp16 else torch.bfloat16
    return {"quantization_config": BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)}


def pretrained_kwargs(cfg: RunConfig, training_args) -> dict[str, Any]:
    """What load_model passes to `from_pretrained` (dtype, attention, 4-bit), for a library that loads the weights
    itself (sentence-transformers)."""
    return {"dtype": _torch_dtype(cfg, training_args), "trust_remote_code": cfg.model.trust_remote_code,
            "attn_implementation": attention_for(cfg, packed=False), **quantization(cfg, training_args)}


def stop_token_ids(tokenizer, stop_words: list[str]) -> list[int]:
    """The ids of the stop words that are single tokens, and EOS."""
    ids = [tokenizer.convert_tokens_to_ids(w) for w in stop_words if w in tokenizer.get_vocab()]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(ids))


def set_stop_tokens(model, tokenizer, stop_words: list[str]) -> None:
    """Make generation stop at the template's end-of-turn tokens (saved in generation_config.json)."""
    ids = stop_token_ids(tokenizer, stop_words)
    if ids and getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = ids if len(ids) > 1 else ids[0]
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def build_peft_config(cfg: RunConfig, task_type: str = "CAUSAL_LM"):
    """A peft LoraConfig (DoRA with use_dora) for the trainer, or None for full training."""
    if not cfg.peft.enabled:
        return None
    from peft import LoraConfig

    p = cfg.peft
    return LoraConfig(
        r=p.lora_r,
        lora_alpha=p.lora_alpha,
        lora_dropout=p.lora_dropout,
        target_modules=p.target_modules,
        exclude_modules=p.exclude_modules,
        modules_to_save=p.modules_to_save,
        use_dora=p.method == "dora",
        task_type=task_type,
    )


def wrap_peft(model, cfg: RunConfig, training_args, task_type: str = "CAUSAL_LM"):
    """The model with adapters, for a plain transformers Trainer (TRL's trainers take the peft config themselves)."""
    if not cfg.peft.enabled:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if cfg.peft.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=training_args.gradient_checkpointing)
    elif training_args.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad-carrying input
    return get_peft_model(model, build_peft_config(cfg, task_type))

