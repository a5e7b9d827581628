"""A plug-in reward for the tiny GRPO demo (config/examples/grpo_tiny.yaml): the share of digits in the answer."""


def digit_share(completion: str, ground_truth: str, data_source: str, extra_info: dict) -> float:
    return sum(ch.isdigit() for ch in completion) / max(len(completion), 1)
