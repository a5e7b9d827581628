"""Load the LoRA adapter a verl run exported (`lora_adapter/`) with PEFT on the base it started from, show that it
changes the base model's logits, and that `hf_model/` (the merged policy) gives the same (bench/gpu_rl.sh lora)."""

import json
import sys
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main(run: Path) -> None:
    adapter = run / "lora_adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    print(f"lora adapter: {sorted(p.name for p in adapter.iterdir())}; r {config['r']}, targets "
          f"{sorted(config['target_modules'])}, base {config['base_model_name_or_path']}")
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(run / "hf_model", dtype=torch.float32)
    ids = torch.arange(1, 33).unsqueeze(0)
    with torch.inference_mode():
        before = base(ids).logits
        model = PeftModel.from_pretrained(base, adapter)
        after = model(ids).logits
        merged_logits = merged(ids).logits
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    print(f"peft loaded: {lora} LoRA parameters; max |logit change| vs base {(after - before).abs().max().item():.3g}; "
          f"hf_model (merged) vs base + adapter {(merged_logits - after).abs().max().item():.3g}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
