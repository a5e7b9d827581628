"""Load the LoRA adapter a verl run exported (hf_model/lora_adapter) with PEFT on the base it started from,
and show that it changes the base model's logits (bench/gpu_rl.sh lora)."""

import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main(run: Path) -> None:
    adapter = run / "hf_model" / "lora_adapter"
    print(f"lora adapter: {sorted(p.name for p in adapter.iterdir())}, config {json.loads((adapter / 'adapter_config.json').read_text())}")
    base = AutoModelForCausalLM.from_pretrained(run / "initial_model", dtype=torch.float32)
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.inference_mode():
        before = base(ids).logits
        model = PeftModel.from_pretrained(base, adapter)
        after = model(ids).logits
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    print(f"peft loaded: {lora} LoRA parameters; max |logit change| vs base {(after - before).abs().max().item():.3g}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
