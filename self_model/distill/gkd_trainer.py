"""TRL's GKDTrainer with each step's loss normalised by the completion tokens it trains on (its own module: importing
TRL is slow, so the stage imports this only when it trains)."""

from __future__ import annotations

from trl.experimental.gkd import GKDTrainer


def completion_tokens(labels) -> int:
    """The predicted completion tokens, counted as the Trainer counts `num_items_in_batch` (after the causal shift)."""
    return int((labels[..., 1:] != -100).sum())


# TRL 1.12 bug: training_step gets num_items_in_batch counted on the data batch, replaces its labels with sampled
# completions (~8x the tokens at max_new_tokens 64) and divides their loss by the old count. Scaling the count by
# sampled over data tokens of the local batch fixes that and keeps the Trainer's factors (gradient accumulation,
# devices).
class RecountingGKDTrainer(GKDTrainer):
    """GKDTrainer whose steps on sampled completions divide the loss by the sampled tokens, not the data batch's."""

    data_tokens: int | None = None  # the data batch's completion tokens, during a training step

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.data_tokens = completion_tokens(inputs["labels"])  # before GKDTrainer.training_step replaces the labels
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            self.data_tokens = None  # evaluation counts num_items_in_batch on its own batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if num_items_in_batch is not None and self.data_tokens is not None:
            num_items_in_batch = num_items_in_batch * completion_tokens(inputs["labels"]) / max(self.data_tokens, 1)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
