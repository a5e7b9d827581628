"""Code that runs inside verl's Ray workers, installed as Ray's `worker_process_setup_hook` (a dotted path, so
each worker imports it from the installed package before any verl code runs).

- Tokenizers: verl (prompts, reward decoding, the reward model) and vLLM's server load tokenizers with
  `AutoTokenizer`, which next to a Qwen2 (and some other families') config.json swaps a tokenizer saved as
  `TokenizersBackend` (the tokenizer stage's, or one from a plain tokenizer.json) for the family's class with its own
  pre-tokenizer, so verl would see other token ids than training did (measured: the demo's SFT model rolled out at
  reward 0.13 on an H200 against 0.5 on CPU). The hook makes `AutoTokenizer` keep the saved class, as our loaders do
  (`modeling.honour_saved_tokenizer_class`).
- The critic: verl 0.9.1's `verl.utils.model.load_valuehead_model` passes `attn_implementation=
  "flash_attention_2"` to transformers, overriding the attention the critic's config asks for
  (`critic.model.override_config.attn_implementation`); without the flash-attn package transformers refuses. The
  hook makes the critic load with the configured attention.
"""

from __future__ import annotations

from self_model.modeling import honour_saved_tokenizer_class

SETUP_HOOK = "self_model.rlhf.verl_workers.setup_worker"


def setup_worker() -> None:
    """Both replacements, in this worker process; a second run keeps one wrapper each."""
    honour_saved_tokenizer_class()
    load_critic_with_configured_attention()


def load_critic_with_configured_attention() -> None:
    """Replace verl's critic loader in this worker (the FSDP engine imports it from `verl.utils.model` on use)."""
    import verl.utils.model as verl_model

    if getattr(verl_model.load_valuehead_model, "configured_attention", False):
        return
    verl_model.load_valuehead_model = _critic_loader(verl_model.load_valuehead_model)


def _critic_loader(verl_loader):
    def load_valuehead_model(local_path, torch_dtype, model_config, trust_remote_code):
        """verl's critic: a token-classification head on the model (one value per token), attention from its config."""
        from transformers import AutoModelForTokenClassification

        attention = getattr(model_config, "_attn_implementation", None)
        if attention in (None, "flash_attention_2"):
            return verl_loader(local_path, torch_dtype, model_config, trust_remote_code)
        return AutoModelForTokenClassification.from_pretrained(
            local_path, torch_dtype=torch_dtype, config=model_config, attn_implementation=attention,
            trust_remote_code=trust_remote_code)

    load_valuehead_model.configured_attention = True
    return load_valuehead_model
