"""verl's reward hooks: `compute_score` is the weighted sum of our reward functions; the reward managers tell them
which answers were cut off at max_response_length (`extra_info["truncated"]`), which the text alone cannot show.

verl loads this file by path in its reward workers (`reward.custom_reward_function.path` and
`reward.reward_manager.module.path`; the workers import `self_model` as the installed package) and passes the
function specs, weights and `lenient` from `reward.custom_reward_function.reward_kwargs`.
"""

from verl.experimental.reward_loop.reward_manager.dapo import DAPORewardManager
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager

from self_model.rlhf.rewards import TRUNCATED, combined, resolve

_resolved: dict[tuple, list] = {}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, functions=(), weights=(), lenient=False,
                  **kwargs):
    """verl's signature; returns {"score": weighted sum, <function name>: value, ...}."""
    key = (tuple(functions), lenient)
    if key not in _resolved:
        _resolved[key] = [resolve(spec, lenient) for spec in functions]
    return combined(_resolved[key], list(weights), solution_str, str(ground_truth), data_source, extra_info or {})


def mark_truncated(data, eos_token_id) -> None:
    """Set extra_info["truncated"] on verl's one-sample batch: the answer filled max_response_length without EOS."""
    item = data[-1]
    responses = item.batch["responses"]
    length = int(item.batch["attention_mask"][-responses.shape[-1]:].sum())
    item.non_tensor_batch["extra_info"][TRUNCATED] = bool(
        length >= responses.shape[-1] and int(responses[length - 1]) != eos_token_id)


class RewardManager(NaiveRewardManager):
    """verl's naive reward manager, plus the truncation flag."""

    async def run_single(self, data) -> dict:
        mark_truncated(data, self.tokenizer.eos_token_id)
        return await super().run_single(data)


class OverlongRewardManager(DAPORewardManager):
    """verl's DAPO reward manager (overlong penalty from reward.reward_kwargs.overlong_buffer_cfg), plus the flag."""

    async def run_single(self, data) -> dict:
        mark_truncated(data, self.tokenizer.eos_token_id)
        return await super().run_single(data)
