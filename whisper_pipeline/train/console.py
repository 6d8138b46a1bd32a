"""What training prints while it runs: the progress bars and one readable line per log entry.

The Trainer's own callbacks print its raw metric dicts ({'eval_wer': 0.83, ...}) between the bars, error
rates as ratios; here a training log is `step 4/10  loss 2.3415  learning rate 1.00e-03` and an evaluation
`step 4/10  validation WER 83.3%  CER 41.0%  ...`, rates in percent as in the summary.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers.trainer_callback import PrinterCallback, ProgressCallback

from whisper_pipeline.train.metrics import percent

# Logged once at the end of training: the summary prints these figures.
END_OF_TRAINING_KEYS = ("train_runtime", "train_loss")


def log_line(logs: Mapping[str, Any], step: int, max_steps: int) -> str | None:
    """One line for a log entry of the Trainer; None for the end-of-training figures."""
    where = f"step {step}/{max_steps}"
    if any(key in logs for key in END_OF_TRAINING_KEYS):
        return None
    if "eval_wer" in logs:
        return (
            f"{where}  validation WER {percent(logs['eval_wer'])}  CER {percent(logs.get('eval_cer'))}  "
            f"(normalized WER {percent(logs.get('eval_normalized_wer'))}, CER "
            f"{percent(logs.get('eval_normalized_cer'))})  loss {logs.get('eval_loss', float('nan')):.4f}"
        )
    if "loss" in logs:
        rate = logs.get("learning_rate")
        shown_rate = f"  learning rate {rate:.2e}" if rate is not None else ""
        return f"{where}  loss {logs['loss']:.4f}{shown_rate}"
    shown = {key: value for key, value in logs.items() if key not in ("epoch", "total_flos")}
    return f"{where}  " + "  ".join(
        f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}" for key, value in shown.items()
    )


class ConsoleProgress(ProgressCallback):
    """The Trainer's progress bars (none with --disable-tqdm) with our log lines written above them."""

    def on_train_begin(self, args, state, control, **kwargs):
        if not args.disable_tqdm:
            super().on_train_begin(args, state, control, **kwargs)
            if self.training_bar is not None:
                self.training_bar.update(state.global_step)  # resumed: the steps already done
        self.current_step = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_step_end(args, state, control, **kwargs)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not args.disable_tqdm:
            super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            super().on_train_end(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        line = log_line(logs, state.global_step, state.max_steps)
        if line is None:
            return
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:
            print(line, flush=True)


def use_console_progress(trainer) -> None:
    """Replace the Trainer's progress and printer callbacks with ConsoleProgress."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(ConsoleProgress())
