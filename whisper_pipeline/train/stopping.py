"""A stop request (SIGTERM: `docker stop`, `docker compose stop`, a scheduler's preemption) ends training
with a checkpoint of the last finished optimizer step, so `--resume-from-checkpoint auto` continues from
there instead of from the last epoch's checkpoint."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import TrainerCallback

from whisper_pipeline.errors import PipelineError


class TrainingStopped(PipelineError):
    """Training saved a checkpoint and stopped on request: the shell's code for death by SIGTERM."""

    exit_code = 128 + signal.SIGTERM


class StopOnSignal(TrainerCallback):
    """Turns SIGTERM into "save and stop" at the end of the current optimizer step.

    The handler only sets a flag (a signal may land anywhere, mid-backward included); the Trainer acts on
    the control flags after the step, writing a whole checkpoint. Under DDP every process must stop at the
    same step (a checkpoint is saved collectively), so the flag is max-reduced across processes each step:
    one scalar, nothing next to a step's gradient all-reduce.
    """

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None  # the global step saved, once stopped

    @contextmanager
    def installed(self) -> Iterator[StopOnSignal]:
        """Handle SIGTERM for the duration of the block, then restore the previous handler."""
        previous = signal.signal(signal.SIGTERM, self._request)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _request(self, signum, frame) -> None:
        self.requested = True

    def _agreed(self, args) -> bool:
        if args.world_size <= 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=args.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed(args):
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False
            self.stopped_at = state.global_step
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.stopped_at is not None:  # the stop's checkpoint is written: no epoch-end evaluation or save
            control.should_evaluate = False
            control.should_save = False
        return control
