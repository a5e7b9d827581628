"""verl's custom reward hook: `compute_score` is the weighted sum of our reward functions.

verl loads this file by path in its reward workers (`reward.custom_reward_function.path`; the workers import
`self_model` as the installed package) and passes the function specs and weights from
`reward.custom_reward_function.reward_kwargs`.
"""

from self_model.rlhf.rewards import combined, resolve

_resolved: dict[tuple[str, ...], list] = {}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, functions=(), weights=(), **kwargs):
    """verl's signature; returns {"score": weighted sum, <function name>: value, ...}."""
    key = tuple(functions)
    if key not in _resolved:
        _resolved[key] = [resolve(spec) for spec in functions]
    return combined(_resolved[key], list(weights), solution_str, str(ground_truth), data_source, extra_info or {})
