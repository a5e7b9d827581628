"""What keeps a long run safe, as one transformers `TrainerCallback`: a SIGTERM/SIGINT saves a checkpoint and stops,
NaN/inf gradients or losses stop the run (or skip the update), a checkpoint is written only with room on the disk, and
each checkpoint records the loss summed over every step so far (the Trainer's own `train_loss` forgets the steps
before a resume)."""

from __future__ import annotations

import math
import shutil
import signal
from pathlib import Path

from transformers import TrainerCallback

from self_model.errors import UserError

LOSS_SUM_KEY = "self_model"  # our entry in trainer_state.json's stateful_callbacks (no callback class of that name)
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DISK_MARGIN = 1.1  # free space needed over the checkpoint's estimated size


class NumericsError(UserError):
    """A NaN or inf loss or gradient norm."""


class Interrupted(UserError):
    """The run stopped on a signal after saving a checkpoint; exits 128 + the signal number, as a shell expects."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def restored_loss_sum(checkpoint: str | None) -> float | None:
    """The loss summed over the steps before `checkpoint` (0 without one; None when the checkpoint lacks our record)."""
    if checkpoint is None:
        return 0.0
    record = checkpoint_state(checkpoint).stateful_callbacks.get(LOSS_SUM_KEY)
    return None if record is None else float(record["train_loss_sum"])


def finished_state(checkpoint: str | None, max_steps: int):
    """The checkpoint's TrainerState when it is already at `max_steps` (the run was killed while saving its final
    model), else None."""
    if checkpoint is None or max_steps <= 0:
        return None
    state = checkpoint_state(checkpoint)
    return state if state.global_step >= max_steps else None


def checkpoint_state(checkpoint: str):
    """The Trainer's state saved in a checkpoint (trainer_state.json)."""
    from transformers import TrainerState

    return TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))


def checkpoint_bytes(model, saves_optimizer: bool) -> int:
    """What one checkpoint takes on disk: the trained weights (the adapter only, under PEFT) and AdamW's two moments."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    is_peft = hasattr(model, "peft_config")
    weights = sum(p.numel() * p.element_size() for p in (trainable if is_peft else model.parameters()))
    moments = sum(p.numel() for p in trainable) * 8 if saves_optimizer else 0
    return weights + moments


class RunGuard(TrainerCallback):
    """Signals, numerical faults, disk space and the whole-run loss, for one `trainer.train()`."""

    def __init__(self, trainer, numerics: str, loss_sum_before: float):
        self.trainer = trainer
        self.numerics = numerics
        self.loss_sum_before = loss_sum_before
        self.skipped_steps: list[int] = []
        self.stop_signal: int | None = None
        self._previous_handlers: dict[int, object] = {}
        self._checkpoint_bytes = 0

    def install(self) -> None:
        """Take over SIGTERM and SIGINT (main thread only), again if a tracker took them since (swanlab ends its
        run on SIGINT); a second signal ends the process at once."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for signum in HANDLED_SIGNALS:
            if signal.getsignal(signum) != self._on_signal:
                previous = signal.signal(signum, self._on_signal)
                self._previous_handlers.setdefault(signum, previous)

    def uninstall(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame) -> None:
        if self.stop_signal is not None:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.stop_signal = signum
        print(f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step, then stopping "
              "(send it again to stop at once, without saving)", flush=True)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.install()  # after the trackers' callbacks have started their runs
        self._checkpoint_bytes = checkpoint_bytes(model, not args.save_only_model)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads or bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
            return
        step = state.global_step + 1
        if self.numerics == "stop":
            raise NumericsError(self._fault_message(f"non-finite gradient norm at step {step}", args))
        self.skipped_steps.append(step)
        print(f"note: step {step}: non-finite gradients, update skipped (numerics: skip_step)", flush=True)
        for parameter in model.parameters():
            parameter.grad = None  # torch's optimizers leave a parameter without a gradient untouched

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, float) and not math.isfinite(value) and self.numerics == "stop":
                raise NumericsError(self._fault_message(f"{key} {value} at step {state.global_step}", args))

    def on_step_end(self, args, state, control, **kwargs):
        if args.world_size > 1:
            self._agree_on_stop(args)
        if self.stop_signal is not None:
            control.should_save = True
            control.should_training_stop = True
        if control.should_save:
            self._check_disk(args, state)
            state.stateful_callbacks[LOSS_SUM_KEY] = {"train_loss_sum": self.loss_sum()}
        return control

    def _agree_on_stop(self, args) -> None:
        """Every rank stops at the same step (the signal may reach them during different steps), else the
        checkpoint's collective save would hang."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.stop_signal or 0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            self.stop_signal = int(flag.item())

    def loss_sum(self) -> float:
        """The loss summed over every optimizer step so far, the steps before a resume included."""
        # transformers 5.10 keeps the steps logged so far in _total_loss_scalar and the rest in _tr_loss
        trainer = self.trainer
        return self.loss_sum_before + trainer._total_loss_scalar + float(trainer._tr_loss.item())

    def _check_disk(self, args, state) -> None:
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(output_dir).free
        needed = int(self._checkpoint_bytes * DISK_MARGIN)
        if free < needed:
            raise UserError(
                f"not enough disk space for checkpoint-{state.global_step} in {output_dir}: it needs about "
                f"{needed / 2**30:.2f} GiB and {free / 2**30:.2f} GiB are free. Free some space, lower "
                f"training_args.save_total_limit, or set training_args.save_only_model: true"
                + self._resume_hint(args))

    def _fault_message(self, what: str, args) -> str:
        return (f"{what}: training stopped before the update. Lower training_args.learning_rate, keep "
                "training_args.max_grad_norm > 0, or set numerics: skip_step to skip such steps"
                + self._resume_hint(args))

    @staticmethod
    def _resume_hint(args) -> str:
        from self_model.runs import last_complete_checkpoint

        last = last_complete_checkpoint(Path(args.output_dir))
        return f"; the last good checkpoint is {last} (continue with --resume)" if last else "; no checkpoint was saved yet"
