"""The scores verl gave with a reward model against the reward model's own, for the same texts.

    python3 bench/verl_rm_scores.py RUN_DIR REWARD_MODEL_DIR [N]

RUN_DIR is a train_grpo.py/train_ppo.py output with `trainer.rollout_data_dir: RUN_DIR/rollouts` set: verl dumps
each step's prompts, answers and scores there. Each prompt is matched to its parquet row (the conversation),
the answer appended as the assistant turn, rendered with the RM tokenizer's chat template (as verl's reward loop
does) and scored by the RM with transformers, both tokenizers loaded as the stages load them. Prints one line per sample and the largest difference.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification

from self_model.modeling import load_saved_tokenizer


def main(run_dir: Path, rm_dir: Path, n: int) -> None:
    actor_tokenizer = load_saved_tokenizer(run_dir / "initial_model")  # as training tokenized (AutoTokenizer may not)
    rm_tokenizer = load_saved_tokenizer(rm_dir)
    model = AutoModelForSequenceClassification.from_pretrained(rm_dir, num_labels=1).eval()
    rows = pd.read_parquet(run_dir / "data" / "train.parquet")
    by_prompt = {}
    for messages in rows["prompt"]:
        messages = [dict(m) for m in messages]
        ids = actor_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
        by_prompt[actor_tokenizer.decode(ids["input_ids"], skip_special_tokens=True)] = messages
    dumped = [json.loads(line) for path in sorted((run_dir / "rollouts").glob("*.jsonl"))
              for line in path.read_text().splitlines() if line.strip()]
    diffs = []
    for sample in dumped[:n]:
        messages = by_prompt.get(sample["input"])
        if messages is None:
            print(f"unmatched prompt: {sample['input'][:80]!r}")
            continue
        text = rm_tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": sample["output"]}],
                                                tokenize=False)
        inputs = rm_tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            own = model(**inputs).logits[0, 0].item()
        diffs.append(abs(own - sample["score"]))
        print(f"verl {sample['score']:+.4f}  rm {own:+.4f}  |diff| {diffs[-1]:.4f}")
    if diffs:
        print(f"rm-scores: {len(diffs)} samples, max |diff| {max(diffs):.4f}, within 0.02: "
              f"{sum(d <= 0.02 for d in diffs)}/{len(diffs)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 16)
