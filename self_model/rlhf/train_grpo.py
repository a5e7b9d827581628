"""GRPO (group-relative advantages, no critic) on verl (Ray, FSDP, vLLM rollout) or TRL, from a YAML config.

    uv run python self_model/rlhf/train_grpo.py --config config/self_model_config/grpo.yaml [--dry-run]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere

from self_model.config import RunConfig  # noqa: E402
from self_model.rlhf import rl_stage  # noqa: E402
from self_model.stage import stage_main  # noqa: E402

STAGE = rl_stage.stage_spec("grpo")


def train(cfg: RunConfig, dry_run: bool = False):
    return rl_stage.train(cfg, "grpo", dry_run)


main = stage_main(STAGE, train)

if __name__ == "__main__":
    sys.exit(main())
