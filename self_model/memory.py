"""The memory plan: what one training process will hold on its GPU, estimated from the model's config and the batch
before any weight is loaded, and whether gradient checkpointing is needed for it to fit.

Estimates, per component (bytes):
- weights, gradients and AdamW's two states in the parameters' dtype (fused AdamW keeps them there); a frozen base
  (LoRA) has no gradient or state, a 4-bit base (QLoRA) about 0.52 bytes a weight; adapters train in float32;
- activations kept for the backward pass, per token and layer, counted from the tensors a Llama/Qwen2 block saves
  (norms, projections, rotary embedding, attention, SwiGLU), fewer with Liger's fused kernels; with checkpointing
  only each layer's input is kept and one layer is recomputed at a time;
- the language-model head's logits (tokens x vocabulary in float32, with their gradient), which Liger's fused
  linear cross-entropy and TRL's chunked loss never materialise whole;
- a frozen reference copy for DPO/KTO without adapters, and a GKD teacher.
`gradient_checkpointing: auto` turns checkpointing on when the estimate without it does not fit in 90% of the GPU,
and always for QLoRA, which is chosen to spend the least memory.
Measured peaks against these estimates are in docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from self_model.config import RunConfig

GIB = 1024**3
HEADROOM = 0.9  # share of the device a plan may fill: the allocator's cache and the CUDA context need the rest
CHUNKED_LOSS_TOKENS = 256  # TRL's chunked_nll (and Liger's fused loss) compute this many tokens' logits at a time
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class Workload:
    """What one optimizer micro-step computes on one GPU."""

    tokens: int  # tokens of one forward (padded length for padded batches)
    trained_tokens: int  # tokens whose logits the loss needs
    lm_head: bool = True  # False for a score head (reward model)
    chunked_loss: bool = False  # the trainer's loss computes the logits a chunk of tokens at a time (TRL's SFT)
    reference_copy: bool = False  # a frozen copy of the model (DPO/KTO, full training)
    teacher_bytes: float = 0.0  # a frozen teacher held beside the model (GKD)


@dataclass(frozen=True)
class Shape:
    """The model dimensions the estimate needs."""

    params: int
    embedding_params: int  # input embeddings and an untied output head
    hidden: int
    intermediate: int
    layers: int
    kv_dim: int
    vocab: int
    adapter_params: int  # LoRA A and B of every adapted linear (0 without peft)
    adapted_inputs: int  # summed input width of the adapted linears of one layer (dropout copies)
    dtype: str  # the checkpoint's weight dtype


@dataclass
class MemoryPlan:
    rows: list[tuple[str, float, str]] = field(default_factory=list)  # (component, bytes, how it was counted)
    device_bytes: int | None = None
    checkpointing: bool = False
    needed_without: float = 0.0  # the total without checkpointing

    @property
    def total(self) -> float:
        return sum(size for _, size, _ in self.rows)

    def summary(self) -> dict:
        """What the run manifest records: each component and the total in GiB, and the checkpointing decision."""
        return {**{name: round(size / GIB, 3) for name, size, _ in self.rows}, "total_gib": round(self.total / GIB, 3),
                "device_gib": round(self.device_bytes / GIB, 1) if self.device_bytes else None,
                "gradient_checkpointing": self.checkpointing}

    def lines(self) -> list[str]:
        width = max(len(name) for name, _, _ in self.rows)
        out = ["memory plan (estimate for one GPU process, before any weight is loaded):"]
        out += [f"  {name:<{width}}  {size / GIB:7.2f} GiB  {note}" for name, size, note in self.rows]
        device = f" of {self.device_bytes / GIB:.1f} GiB on this GPU" if self.device_bytes else " (no GPU here)"
        out.append(f"  {'total':<{width}}  {self.total / GIB:7.2f} GiB{device}; gradient checkpointing "
                   f"{'on' if self.checkpointing else 'off'}")
        return out


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def model_shape(cfg: RunConfig) -> Shape:
    """Dimensions from the model config, parameters counted on the meta device (no memory, no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(cfg.model.init_from_config or cfg.model_name_or_path,
                                        trust_remote_code=cfg.model.trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.model.trust_remote_code)
    params = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    if not getattr(text, "tie_word_embeddings", False):
        embedding += model.get_output_embeddings().weight.numel()
    adapter_params, adapted_inputs = _adapted(cfg, model)
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    dtype = str(getattr(text, "dtype", None) or getattr(text, "torch_dtype", None) or "float32").replace("torch.", "")
    return Shape(params, embedding, text.hidden_size, text.intermediate_size, text.num_hidden_layers,
                 kv_heads * head_dim, text.vocab_size, adapter_params, adapted_inputs, dtype)


def _adapted(cfg: RunConfig, model) -> tuple[int, int]:
    """LoRA parameters of the linears `peft.target_modules` selects, and their input widths in one layer."""
    import torch

    if not cfg.peft.enabled:
        return 0, 0
    head = model.get_output_embeddings()
    targets, excluded = cfg.peft.target_modules, cfg.peft.exclude_modules or []
    params, inputs = 0, 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is head or any(name.endswith(e) for e in excluded):
            continue
        if targets != "all-linear" and not any(name.endswith(t) for t in targets):
            continue
        params += cfg.peft.lora_r * (module.in_features + module.out_features)
        if ".layers.0." in name:
            inputs += module.in_features
    return params, inputs


def activation_bytes_per_token(shape: Shape, liger: bool, lora_dropout: bool) -> float:
    """Bytes one decoder layer keeps for backward per token (bf16 activations), with or without Liger's kernels."""
    h, i, kv = shape.hidden, shape.intermediate, shape.kv_dim
    if liger:  # fused RMSNorm keeps its input and rstd, fused SwiGLU its two inputs, fused RoPE nothing extra
        per_layer = 2 * (9 * h + 3 * i)
    else:  # RMSNorm in float32, RoPE's inputs and rotated copies, SiLU's input and output
        per_layer = 2 * (16 * h + 2 * kv + 4 * i)
    if lora_dropout:
        per_layer += 2 * shape.adapted_inputs  # each adapted linear's dropped-out input
    return per_layer


def plan(cfg: RunConfig, shape: Shape, work: Workload, dtype: str, liger: bool, device_bytes: int | None,
         checkpointing: bool | str) -> MemoryPlan:
    """The estimate, and checkpointing on when asked or (`auto`) when the run would not fit without it."""
    bytes_per = BYTES.get(dtype, 4)
    result = MemoryPlan(device_bytes=device_bytes)
    peft = cfg.peft
    if peft.enabled and peft.method == "qlora":
        quantized = shape.params - shape.embedding_params
        result.rows.append(("weights", quantized * 0.52 + shape.embedding_params * 2, "4-bit base, 16-bit embeddings"))
    else:
        result.rows.append(("weights", shape.params * bytes_per, f"{_count(shape.params)} parameters in {dtype}"))
    if peft.enabled:
        result.rows.append(("adapters + grads + AdamW", shape.adapter_params * 16.0,
                            f"{_count(shape.adapter_params)} LoRA parameters in float32"))
    else:
        result.rows.append(("gradients", shape.params * bytes_per, dtype))
        result.rows.append(("AdamW states", shape.params * bytes_per * 2, f"two per parameter, {dtype}"))
    if work.reference_copy:
        result.rows.append(("reference model", shape.params * bytes_per, "frozen copy"))
    if work.teacher_bytes:
        result.rows.append(("teacher model", work.teacher_bytes, "frozen, in the training precision"))
    per_token = activation_bytes_per_token(shape, liger, peft.enabled and peft.lora_dropout > 0)
    ends = work.tokens * 2 * 6 * shape.hidden  # embeddings, final norm, the head's input
    full = work.tokens * shape.layers * per_token + ends
    kept = work.tokens * shape.layers * 2 * shape.hidden + work.tokens * per_token + ends
    logits_tokens = CHUNKED_LOSS_TOKENS if liger or work.chunked_loss else work.trained_tokens
    logits = logits_tokens * shape.vocab * 12.0 if work.lm_head else 0.0  # float32 logits, softmax and gradient
    fixed = result.total + logits
    result.needed_without = fixed + full
    fits = device_bytes is None or result.needed_without <= HEADROOM * device_bytes
    if isinstance(checkpointing, bool):
        result.checkpointing = checkpointing
    else:  # QLoRA is chosen to spend the least memory: it checkpoints whatever the room
        result.checkpointing = (peft.enabled and peft.method == "qlora") or not fits
    activations = kept if result.checkpointing else full
    note = f"{work.tokens:,} tokens x {shape.layers} layers" + (", checkpointed" if result.checkpointing else "")
    result.rows.append(("activations", activations, note + (", Liger kernels" if liger else "")))
    if work.lm_head:
        counted = f"chunks of {logits_tokens}" if logits_tokens == CHUNKED_LOSS_TOKENS else f"{logits_tokens:,}"
        result.rows.append(("logits", logits, f"{counted} tokens x {shape.vocab:,} vocabulary"))
    return result
