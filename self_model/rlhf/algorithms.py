"""The policy-gradient family by name (`rl.algorithm`), as settings of verl and of TRL's GRPOTrainer.

Each entry is what makes the algorithm itself: advantage estimator, loss aggregation, clipping, group filtering.
Clip ranges are the papers' values unless the user sets `rl.actor.clip_ratio` / `clip_ratio_high`. An algorithm
a backend cannot run is refused with the other backend named (`algorithm_problems`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from self_model.config import RunConfig


@dataclass(frozen=True)
class Algorithm:
    paper: str
    verl: dict[str, Any]  # verl keys (the estimator, loss aggregation, policy loss, advantage normalisation)
    trl: dict[str, Any] | None  # GRPOConfig fields; None: TRL's GRPOTrainer cannot run it
    clip: tuple[float, float] | None = None  # (low, high) from the paper; None: rl.actor.clip_ratio both ways
    critic: bool = False
    dynamic_sampling: bool = False  # drop groups whose answers all score the same, sample more (verl)
    overlong_penalty: bool = False  # reward falls linearly over the last rl.reward.overlong_buffer tokens (verl)


ALGORITHMS: dict[str, Algorithm] = {
    "ppo": Algorithm("Schulman et al. 2017", {"algorithm.adv_estimator": "gae"}, None, critic=True),
    "grpo": Algorithm("DeepSeekMath, Shao et al. 2024", {
        "algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": True,
        "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-mean"},
        {"loss_type": "grpo", "scale_rewards": "group"}),
    "dr_grpo": Algorithm("Dr. GRPO, Liu et al. 2025", {
        "algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": False,
        "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-sum-norm"},
        {"loss_type": "dr_grpo", "scale_rewards": "none"}),
    "rloo": Algorithm("RLOO, Ahmadian et al. 2024", {
        "algorithm.adv_estimator": "rloo", "actor_rollout_ref.actor.loss_agg_mode": "token-mean"}, None),
    "reinforce_plus_plus": Algorithm("REINFORCE++, Hu 2025", {
        "algorithm.adv_estimator": "reinforce_plus_plus", "actor_rollout_ref.actor.loss_agg_mode": "token-mean"}, None),
    "dapo": Algorithm("DAPO, Yu et al. 2025", {
        "algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": True,
        "actor_rollout_ref.actor.loss_agg_mode": "token-mean"},
        {"loss_type": "dapo", "scale_rewards": "group", "mask_truncated_completions": True},
        clip=(0.2, 0.28), dynamic_sampling=True, overlong_penalty=True),
    "gspo": Algorithm("GSPO, Zheng et al. 2025", {
        "algorithm.adv_estimator": "grpo", "algorithm.norm_adv_by_std_in_grpo": True,
        "actor_rollout_ref.actor.policy_loss.loss_mode": "gspo",
        "actor_rollout_ref.actor.loss_agg_mode": "seq-mean-token-mean"},
        {"loss_type": "grpo", "importance_sampling_level": "sequence", "scale_rewards": "group"},
        clip=(3e-4, 4e-4)),
}
STAGE_OF = {"ppo": "ppo"}  # the stage script each algorithm runs in; the critic-free ones run in train_grpo.py


def algorithm_name(cfg: RunConfig, stage: str) -> str:
    """rl.algorithm, or the stage's own (grpo / ppo) when unset."""
    return cfg.sections["rl"].algorithm or stage


def clip_range(cfg: RunConfig, algorithm: str) -> tuple[float, float]:
    """(low, high) clip of the policy ratio: the user's keys where set, else the paper's, else rl.actor.clip_ratio."""
    actor = cfg.sections["rl"].actor
    paper = ALGORITHMS[algorithm].clip
    from_paper = paper is not None and not cfg.was_set("rl.actor.clip_ratio")
    low = paper[0] if from_paper else actor.clip_ratio
    high = actor.clip_ratio_high if actor.clip_ratio_high is not None else paper[1] if from_paper else low
    return low, high


def overlong_buffer(cfg: RunConfig, algorithm: str) -> int | None:
    """Tokens before max_response_length where the overlong penalty starts (DAPO: a fifth of the length)."""
    rl = cfg.sections["rl"]
    if rl.reward.overlong_buffer is not None:
        return rl.reward.overlong_buffer or None
    return rl.rollout.max_response_length // 5 if ALGORITHMS[algorithm].overlong_penalty else None


def verl_settings(cfg: RunConfig, algorithm: str) -> dict[str, Any]:
    """verl keys for the algorithm (estimator, loss, clipping, DAPO's dynamic sampling and overlong penalty)."""
    spec = ALGORITHMS[algorithm]
    low, high = clip_range(cfg, algorithm)
    values = {**spec.verl, "actor_rollout_ref.actor.clip_ratio_low": low, "actor_rollout_ref.actor.clip_ratio_high": high}
    if spec.dynamic_sampling:
        values.update({"algorithm.filter_groups.enable": True, "algorithm.filter_groups.metric": "reward"})
    return values


def trl_settings(cfg: RunConfig, algorithm: str) -> dict[str, Any]:
    """GRPOConfig fields for the algorithm (only called for those TRL runs: algorithm_problems refuses the rest)."""
    low, high = clip_range(cfg, algorithm)
    return {**ALGORITHMS[algorithm].trl, "epsilon": low, "epsilon_high": high}


def algorithm_problems(cfg: RunConfig, stage: str) -> list[tuple[str, str]]:
    """An algorithm in the wrong stage script, or on a backend that cannot run it."""
    rl = cfg.sections["rl"]
    algorithm = algorithm_name(cfg, stage)
    spec = ALGORITHMS[algorithm]
    problems = []
    if STAGE_OF.get(algorithm, "grpo") != stage:
        script = "train_ppo.py" if spec.critic else "train_grpo.py"
        problems.append(("rl.algorithm", f"{algorithm} {'trains a critic' if spec.critic else 'uses no critic'}: run it "
                         f"with self_model/rlhf/{script}"))
    elif rl.backend == "trl" and spec.trl is None and not spec.critic:
        problems.append(("rl.algorithm", f"{algorithm} ({spec.paper}) runs on rl.backend: verl; TRL's GRPOTrainer has "
                         "no such advantage estimator"))
    if rl.backend == "trl" and rl.reward.overlong_buffer:
        problems.append(("rl.reward.overlong_buffer", "the overlong penalty is verl's (rl.backend: verl); TRL's DAPO "
                         "masks truncated answers instead"))
    if rl.backend == "verl" and spec.dynamic_sampling and rl.reward.reward_model:
        problems.append(("rl.algorithm", f"{algorithm}'s dynamic sampling needs the reward while sampling: use reward "
                         "functions, or algorithm grpo with a reward model"))
    low, high = clip_range(cfg, algorithm)
    if high < low:
        problems.append(("rl.actor.clip_ratio_high", f"{high} is below the lower clip range {low}"))
    return problems
