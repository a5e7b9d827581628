"""GRPO (group-relative advantages, no critic) on verl (Ray, FSDP, vLLM rollout) or TRL, from a YAML config.

    uv run python self_model/rlhf/train_grpo.py --config config/self_model_config/grpo.yaml [--dry-run]
"""

from __future__ import annotations

import sys

from self_model.rlhf import rl_stage
from self_model.stage import stage_main

STAGE = rl_stage.stage_spec("grpo")
main = stage_main(STAGE, lambda cfg, dry_run=False: rl_stage.train(cfg, STAGE, dry_run))

if __name__ == "__main__":
    sys.exit(main())
