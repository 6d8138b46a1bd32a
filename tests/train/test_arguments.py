"""train_model.py's flags: grouped help, one-line mistakes, save following evaluation, early stopping."""

import contextlib
import io
import re
from pathlib import Path

import pytest

from whisper_pipeline.errors import ConfigError
from whisper_pipeline.train.arguments import parse_arguments
from whisper_pipeline.train.console import log_line
from whisper_pipeline.train.outputs import plural

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def help_text():
    with pytest.raises(SystemExit) as exit_request, contextlib.redirect_stdout(io.StringIO()) as out:
        parse_arguments(["--help"])
    assert exit_request.value.code == 0
    return out.getvalue()


def test_help_lists_our_groups_first_then_the_trainers_fields(help_text):
    titles = [line[:-1] for line in help_text.splitlines() if re.fullmatch(r"\S.*:", line)]
    assert titles[1:7] == ["data", "model", "LoRA", "training", "evaluation", "outputs"]
    assert titles[7].startswith("Trainer settings")
    assert help_text.index("--lora-r") < help_text.index("--output-dir") < help_text.index("--optim ")


def test_help_shows_dashes_booleans_as_pairs_and_each_default_once(help_text):
    assert not re.search(r"--[a-z0-9]+_[a-z0-9_]+", help_text)  # underscores are accepted, never shown
    assert "--spec-augment, --no-spec-augment" in help_text
    assert "--unfreeze-conv, --no-unfreeze-conv" in help_text
    assert "--bf16, --no-bf16" in help_text  # the Trainer's flags too
    entries = re.split(r"\n  (?=-)", help_text)
    ours = re.split(r"\n  (?=-)", help_text.split("\nTrainer settings")[0])
    assert [entry for entry in entries if entry.count("(default: ") > 1] == []
    assert [entry for entry in ours if entry.lower().count("default") > 1] == []  # ours say it once
    resume = next(entry for entry in entries if entry.startswith("--resume-from-checkpoint"))
    assert "auto" in resume and "--output-dir" in resume
    assert len(help_text.splitlines()) < 500  # was 688 lines


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8' (choose from"),
        (
            ["--learning-rat", "1e-3"],
            "unknown argument(s): --learning-rat (did you mean --learning-rate?); see",
        ),
        (["--lora_alfa", "8"], "--lora_alfa (did you mean --lora-alpha?)"),
        (["stray"], "stray (a value without a flag, or a config file not given first)"),
        (["--early-stopping-patience", "0"], "--early-stopping-patience must be 1 or more"),
        (["--early-stopping-patience", "2", "--eval-strategy", "no"], "--early-stopping-patience needs"),
    ],
)
def test_mistakes_are_one_line_errors(argv, message):
    with pytest.raises(ConfigError) as error:
        parse_arguments(argv)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_the_libraries_message_is_never_cut():
    with pytest.raises(ConfigError) as error:
        parse_arguments(["--eval-strategy", "steps", "--save-strategy", "epoch"])
    # transformers' message is on several lines; all of it is kept, on one.
    assert str(error.value).endswith(
        "Evaluation strategy: IntervalStrategy.STEPS - Save strategy: SaveStrategy.EPOCH"
    )


def test_flags_keep_their_old_spellings_and_values():
    data, model, _, training = parse_arguments(
        [
            "--disable_tqdm",
            "true",
            "--no-spec-augment",
            "--unfreeze-conv",
            "false",
            "--eval-on-start",
            "false",
        ]
    )
    assert training.disable_tqdm and not data.spec_augment and not model.unfreeze_conv
    assert not training.eval_on_start


@pytest.mark.parametrize(
    ("argv", "strategy", "steps"),
    [
        (["--eval-strategy", "steps", "--eval-steps", "3"], "steps", 3),  # save follows evaluation
        (["--eval-strategy", "steps", "--logging-steps", "4"], "steps", 4),  # eval steps default to logging
        (["--eval-strategy", "steps", "--eval-steps", "3", "--save-strategy", "steps"], "steps", 3),
        (["--eval-strategy", "steps", "--eval-steps", "3", "--save-steps", "6"], "steps", 6),
        ([], "epoch", 500),
        (["--eval-strategy", "no", "--no-load-best-model-at-end"], "no", 500),
    ],
)
def test_save_strategy_follows_the_eval_strategy_unless_set(argv, strategy, steps):
    *_, training = parse_arguments(argv)
    assert (training.save_strategy.value, training.save_steps) == (strategy, steps)


def test_console_lines_show_rates_in_percent_and_no_end_of_training_dict():
    evaluation = {
        "eval_wer": 32.174,
        "eval_cer": 0.5,
        "eval_normalized_wer": 1.0,
        "eval_loss": 2.5,
        "epoch": 1,
    }
    assert log_line(evaluation, 4, 10) == (
        "step 4/10  validation WER 3217.4%  CER 50.0%  (normalized WER 100.0%, CER n/a)  loss 2.5000"
    )
    assert log_line({"loss": 3.25, "learning_rate": 1e-3, "epoch": 0.5}, 1, 1) == (
        "step 1/1  loss 3.2500  learning rate 1.00e-03"
    )
    assert log_line({"train_runtime": 3.8, "train_loss": 10.8, "epoch": 0.3}, 2, 2) is None


def test_counts_are_plural_right():
    assert [
        plural(1, "step"),
        plural(2, "step"),
        plural(0.5, "epoch"),
        plural(1, "process", "processes"),
    ] == [
        "1 step",
        "2 steps",
        "0.5 epochs",
        "1 process",
    ]


PRESETS = sorted((REPO / "configs" / "presets").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_presets_parse_with_the_seeds_examples_per_update(preset):
    _, model, _, training = parse_arguments([str(preset)])
    assert model.model == "./model"  # the container mounts the chosen Whisper there
    assert preset.stem in preset.read_text(encoding="utf-8").splitlines()[0]
    assert training.per_device_train_batch_size * training.gradient_accumulation_steps == 64
    assert "ESTIMATE" in preset.read_text(encoding="utf-8")  # until measured on a GPU
