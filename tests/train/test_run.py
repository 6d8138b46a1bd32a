"""train_model.py on a real cache with the tiny model: outputs, reload, continue, resume, DDP, user errors.

Whole training runs (the command's outputs, DDP, thread vs loader worker, the command's user errors) are
marked e2e.
"""

import json
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import WhisperProcessor

from whisper_pipeline import __version__
from whisper_pipeline.cache import open_cache
from whisper_pipeline.prepare.features import pad_features
from whisper_pipeline.train import run as run_module
from whisper_pipeline.train import trainer as trainer_module
from whisper_pipeline.train.arguments import parse_arguments
from whisper_pipeline.train.batches import BackgroundBatches, CacheRows, model_inputs
from whisper_pipeline.train.metrics import ComputeMetrics, score
from whisper_pipeline.train.modeling import (
    configure_generation,
    load_base_model,
    load_trained,
    training_precision,
)
from whisper_pipeline.train.outputs import TrainingReport, format_summary
from whisper_pipeline.train.run import main
from whisper_pipeline.train.trainer import DecoderTokens, WhisperDataCollator

REPO = Path(__file__).resolve().parents[2]
EVAL_BATCH = 8
GENERATION_MAX_LENGTH = 24
# A few steps of the tiny model, evaluated and saved every 2 steps: every output in seconds.
QUICK = [
    "--per-device-train-batch-size", "4",
    "--per-device-eval-batch-size", str(EVAL_BATCH),
    "--eval-strategy", "steps", "--eval-steps", "2",
    "--save-strategy", "steps", "--save-steps", "2",
    "--generation-max-length", str(GENERATION_MAX_LENGTH),
    "--logging-steps", "1",
    "--lora-r", "4", "--lora-alpha", "8",
    "--disable-tqdm", "true",
]  # fmt: skip
SUMMARY = "train_model.py summary"


def _cli(*args: str, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *launcher, "train_model.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _read(output_dir: Path) -> tuple[dict, list[dict], dict]:
    metrics = json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))
    lines = (output_dir / "predictions_validation.jsonl").read_text(encoding="utf-8").splitlines()
    config = yaml.safe_load((output_dir / "train_config.yaml").read_text(encoding="utf-8"))
    return metrics, [json.loads(line) for line in lines], config


@pytest.fixture(scope="module")
def validation(prepared_cache, tiny_model_dir):
    cache = open_cache(prepared_cache, model_dir=tiny_model_dir)
    return cache.validation.filter(
        lambda augmentation: augmentation == 0, input_columns="augmentation", keep_in_memory=True
    )


@pytest.fixture(scope="module")
def trained(tiny_model_dir, prepared_cache, tmp_path_factory):
    """One real command-line run: 4 steps with --unfreeze-conv (the outputs every test below reads)."""
    output_dir = tmp_path_factory.mktemp("trained") / "outputs"
    result = _cli(
        "--model", str(tiny_model_dir), "--data-dir", str(prepared_cache), "--output-dir", str(output_dir),
        "--max-steps", "4", "--unfreeze-conv", *QUICK,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir, result.stdout


def test_seed_config_reproduces_the_seed_run():
    data, model, _, training = parse_arguments([str(REPO / "configs" / "seed.yaml")])
    assert (model.model, model.adapter) == ("./model", "./adapters/my-whisper-medium-lora")
    assert (training.per_device_train_batch_size, training.gradient_accumulation_steps) == (16, 4)
    assert (training.num_train_epochs, training.learning_rate) == (5, 5e-6)
    assert (training.eval_strategy.value, training.save_strategy.value) == ("epoch", "epoch")
    assert training.load_best_model_at_end and training.metric_for_best_model == "wer"
    assert training.greater_is_better is False and data.spec_augment is False


def test_persistent_loader_workers_only_with_workers():
    *_, training = parse_arguments(["--dataloader-persistent-workers", "true"])
    assert training.dataloader_num_workers == 0  # the default: batches made by a thread
    assert not training.dataloader_persistent_workers  # torch refuses it without workers
    *_, training = parse_arguments(["--dataloader-num-workers", "2"])
    assert training.dataloader_persistent_workers


def test_collator_batches_compactly_and_device_padding_restores_pad_features_exactly(
    validation, tiny_model_dir
):
    rows = CacheRows(validation).take(range(min(4, len(validation))))
    tokens = DecoderTokens.from_tokenizer(WhisperProcessor.from_pretrained(str(tiny_model_dir)).tokenizer)
    start = tokens.start_of_transcript
    batch = WhisperDataCollator(tokens, timestamp_probability=1.0)(rows)
    features, labels = batch["input_features"], batch["labels"]
    assert features.dtype == torch.float16  # the cache's frames, padded only to the longest row
    assert features.shape == (len(rows), max(len(row.frames) for row in rows), rows[0].frames.shape[1])
    assert batch["num_frames"].tolist() == [len(row.frames) for row in rows]
    assert len(set(batch["num_frames"].tolist())) > 1  # rows shorter than the batch: padded on the device
    for dtype in (torch.float32, torch.bfloat16):
        inputs = model_inputs(batch, dtype=dtype, device="cpu")
        assert set(inputs) == {"input_features", "attention_mask", "labels"}  # never the compact keys
        assert inputs["input_features"].dtype == dtype
        for row, padded in zip(rows, inputs["input_features"], strict=True):
            expected = torch.from_numpy(pad_features(row.frames, row.pad_value)).to(dtype)
            assert torch.equal(padded, expected)  # float16 -> float32 is exact, so is the padding
    for row, ids in zip(rows, labels, strict=True):
        expected = row.labels[1:]  # the model shifts its start token in front itself
        assert ids[: len(expected)].tolist() == expected.tolist()
        assert (ids[len(expected) :] == -100).all()
    assert (labels[:, 0] != start).all()


@pytest.mark.e2e
def test_short_run_trains_evaluates_with_generation_and_writes_every_output(
    trained, validation, prepared_cache, tiny_model_dir
):
    output_dir, stdout = trained
    metrics, predictions, config = _read(output_dir)
    assert stdout.count(SUMMARY) == 1
    # Our log lines, error rates in percent; none of the Trainer's metric dicts.
    assert not [line for line in stdout.splitlines() if line.startswith("{")]
    assert re.search(r"^step 2/4  validation WER \d+\.\d%  CER \d+\.\d%", stdout, re.MULTILINE)
    assert re.search(r"^step 1/4  loss \d+\.\d{4}  learning rate", stdout, re.MULTILINE)
    assert "  training     4 steps, " in stdout and "1 process\n" in stdout
    assert f"\n  precision    {training_precision('auto')[1]}\n" in stdout  # fp32 on an AVX2-only CPU

    adapter = {path.name for path in (output_dir / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= adapter
    assert not [name for name in adapter if name.endswith((".bin", ".pt", ".pth"))]
    assert list((output_dir / "runs").rglob("events.out.tfevents.*"))

    scores = {"wer", "cer", "normalized_wer", "normalized_cer", "loss", "runtime", "samples_per_second"}
    assert metrics["baseline"]["step"] == 0 and scores <= set(metrics["baseline"])
    assert [entry["step"] for entry in metrics["evaluations"]] == [2, 4]
    assert all(scores <= set(entry) for entry in metrics["evaluations"])
    assert metrics["best"]["step"] in (2, 4) and scores <= set(metrics["best"])
    best_eval = next(entry for entry in metrics["evaluations"] if entry["step"] == metrics["best"]["step"])
    assert metrics["best"]["wer"] == pytest.approx(best_eval["wer"])
    assert metrics["train"]["global_step"] == 4
    assert metrics["train"]["loss"] > 0 and metrics["train"]["samples_per_second"] > 0
    assert [entry["step"] for entry in metrics["train"]["loss_history"]] == [1, 2, 3, 4]

    assert len(predictions) == len(validation)
    assert [p["segment_id"] for p in predictions] == validation["segment_id"]
    assert {"reference", "hypothesis", "wer", "normalized_wer", "audio_uri"} <= set(predictions[0])
    references = [p["reference"] for p in predictions]
    assert score(references, [p["hypothesis"] for p in predictions])["wer"] == pytest.approx(
        metrics["best"]["wer"]
    )

    cache = open_cache(prepared_cache, model_dir=tiny_model_dir)
    assert config["cache"]["fingerprint"] == cache.fingerprint
    assert config["package_version"] == __version__
    assert config["resolved"]["language"] == cache.report["settings"]["language"]
    assert config["resolved"]["unfreeze_conv"] is True
    assert config["arguments"]["max_steps"] == 4 and config["arguments"]["predict_with_generate"] is True
    assert metrics["long_form"] is None  # every validation recording is one utterance: nothing to add


@pytest.mark.e2e
def test_the_end_of_training_transcribes_validation_recordings_whole(
    long_form_cache, tiny_model_dir, tmp_path, capsys
):
    """Base and adapter on the held-out multi-utterance recording, from its cached whole-recording
    features, with Whisper's long-form generation: what users deploy, scored beside the short-form WER."""
    output_dir = tmp_path / "outputs"
    code = main(
        ["--model", str(tiny_model_dir), "--data-dir", str(long_form_cache), "--output-dir", str(output_dir),
         "--max-steps", "1", "--long-form-max-new-tokens", "24", *QUICK]
    )  # fmt: skip
    assert code == 0
    long_form = json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))["long_form"]
    assert set(long_form) == {"base", "adapter"}
    for scores in long_form.values():
        assert (scores["recordings"], scores["noise_recordings"]) == (1, 0)
        assert scores["wer"] >= 0 and 0 <= scores["deletions"] <= 1 and 0 <= scores["coverage"] <= 1
    summary = capsys.readouterr().out
    assert "long-form    base" in summary and "long-form    adapter" in summary


@pytest.mark.e2e
def test_saved_adapter_reloads_and_reproduces_the_saved_validation_metrics(
    trained, validation, tiny_model_dir
):
    output_dir, _ = trained
    metrics, predictions, config = _read(output_dir)
    model = load_trained(tiny_model_dir, output_dir / "adapter")
    configure_generation(model.get_base_model(), language=config["resolved"]["language"], task="transcribe")
    tokenizer = WhisperProcessor.from_pretrained(str(output_dir / "adapter")).tokenizer
    collate = WhisperDataCollator(DecoderTokens.from_tokenizer(tokenizer))
    decode = ComputeMetrics(tokenizer).decode
    rows = CacheRows(validation)
    references, hypotheses = [], []
    for start in range(0, len(rows), EVAL_BATCH):  # the run's evaluation batches
        batch = collate(rows.take(range(start, min(start + EVAL_BATCH, len(rows)))))
        inputs = model_inputs(batch, dtype=torch.float32, device="cpu")
        with torch.no_grad():
            generated = model.generate(
                input_features=inputs["input_features"], max_length=GENERATION_MAX_LENGTH
            )
        references += decode(inputs["labels"].numpy())
        hypotheses += decode(generated.numpy())
    assert hypotheses == [p["hypothesis"] for p in predictions]
    reproduced = score(references, hypotheses)
    for name in ("wer", "cer", "normalized_wer", "normalized_cer"):
        assert reproduced[name] == pytest.approx(metrics["best"][name])


@pytest.mark.e2e
def test_unfrozen_convolutions_are_the_trained_ones_after_reloading(trained, tiny_model_dir):
    output_dir, _ = trained
    saved = load_file(output_dir / "adapter" / "adapter_model.safetensors")
    base = load_base_model(tiny_model_dir, precision="fp32")
    merged = load_trained(tiny_model_dir, output_dir / "adapter", merge=True)
    for name in ("conv1", "conv2"):
        trained_weight = saved[f"base_model.model.model.encoder.{name}.weight"]
        assert not torch.equal(trained_weight, getattr(base.model.encoder, name).weight)
        assert torch.equal(getattr(merged.model.encoder, name).weight, trained_weight)


@pytest.mark.e2e
def test_continuing_the_saved_adapter_starts_from_it(
    trained, tiny_model_dir, prepared_cache, tmp_path, capsys
):
    output_dir, _ = trained
    first, _, _ = _read(output_dir)
    continued = tmp_path / "continued"
    code = main(
        [
            "--model", str(tiny_model_dir), "--data-dir", str(prepared_cache), "--output-dir", str(continued),
            "--adapter", str(output_dir / "adapter"), "--max-steps", "2", *QUICK,
        ]
    )  # fmt: skip
    assert code == 0
    assert SUMMARY in capsys.readouterr().out
    metrics, _, config = _read(continued)
    # The continued run's baseline is the first run's best model: the adapter (and its convolutions) loaded.
    for name in ("wer", "cer", "loss"):
        assert metrics["baseline"][name] == pytest.approx(first["best"][name], rel=1e-4)
    assert metrics["train"]["global_step"] == 2
    assert config["resolved"]["unfreeze_conv"] is True  # kept from the adapter without --unfreeze-conv
    assert config["arguments"]["adapter"] == str(output_dir / "adapter")


@pytest.mark.e2e
def test_resume_from_checkpoint_auto_continues_the_run(
    trained, tiny_model_dir, prepared_cache, tmp_path, capsys
):
    output_dir = tmp_path / "outputs"
    shutil.copytree(trained[0], output_dir)
    first, _, _ = _read(output_dir)
    code = main(
        [
            "--model", str(tiny_model_dir), "--data-dir", str(prepared_cache),
            "--output-dir", str(output_dir), "--unfreeze-conv", "--max-steps", "6",
            "--resume-from-checkpoint", "auto", *QUICK,
        ]
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    metrics, _, config = _read(output_dir)
    assert config["resolved"]["resume_from_checkpoint"] == str(output_dir / "checkpoint-4")
    assert metrics["train"]["global_step"] == 6
    # The checkpoint's history carries on: same baseline (not re-evaluated), same first evaluations.
    assert metrics["baseline"] == first["baseline"]
    assert [entry["step"] for entry in metrics["evaluations"]] == [2, 4, 6]
    assert metrics["evaluations"][:2] == first["evaluations"]
    assert [entry["step"] for entry in metrics["train"]["loss_history"]] == [1, 2, 3, 4, 5, 6]


@pytest.mark.e2e
def test_resume_from_checkpoint_auto_on_a_finished_run_trains_no_further(
    trained, tiny_model_dir, prepared_cache, tmp_path, capsys
):
    """The Trainer takes one more step after resuming before it checks --max-steps: a finished run is
    completed (its best model evaluated and saved) without it."""
    output_dir = tmp_path / "outputs"
    shutil.copytree(trained[0], output_dir)
    first, first_predictions, _ = _read(output_dir)
    code = main(
        [
            "--model", str(tiny_model_dir), "--data-dir", str(prepared_cache),
            "--output-dir", str(output_dir), "--unfreeze-conv", "--max-steps", "4",
            "--resume-from-checkpoint", "auto", *QUICK,
        ]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert f"resumed from {output_dir / 'checkpoint-4'} at step 4" in out
    summary = out[out.index(SUMMARY) :]
    assert "new LoRA" not in summary
    assert f"LoRA continued from {output_dir / 'checkpoint-4'} (step 4)" in summary
    assert "none left: the checkpoint had finished the run (4 steps)" in summary
    metrics, predictions, config = _read(output_dir)
    assert metrics["train"]["global_step"] == 4 and config["resolved"]["finished_before"] is True
    assert metrics["evaluations"] == first["evaluations"] and metrics["best"]["step"] == first["best"]["step"]
    assert metrics["best"]["wer"] == pytest.approx(first["best"]["wer"])  # the best model, reloaded
    assert [p["hypothesis"] for p in predictions] == [p["hypothesis"] for p in first_predictions]


@pytest.mark.e2e
def test_train_config_yaml_fed_back_repeats_the_run(trained, tmp_path):
    output_dir, _ = trained
    again = tmp_path / "again"
    result = _cli(str(output_dir / "train_config.yaml"), "--output-dir", str(again))
    assert result.returncode == 0, result.stderr[-3000:]
    _, _, first = _read(output_dir)
    _, _, second = _read(again)
    assert {**first["arguments"], "output_dir": None} == {**second["arguments"], "output_dir": None}
    weights = [load_file(path / "adapter" / "adapter_model.safetensors") for path in (output_dir, again)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_the_summary_says_which_precision_and_why(tmp_path):
    resolved = {"precision": "bf16", "precision_reason": "bf16 autocast: this CPU has AMX", "world_size": 1}
    resolved.update(unfreeze_conv=False, trainable_parameters=10, total_parameters=100)
    settings = {
        "cache": {"examples": {"train": 4, "validation": 2}, "data_dir": "cache", "fingerprint": "f" * 64},
        "resolved": resolved,
        "arguments": {"model": "./model", "adapter": None, "lora_r": 32, "lora_alpha": 64},
    }
    train = {"global_step": 2, "max_steps": 2, "epochs": 1.0, "runtime": 3.0, "samples_per_second": 1.0}
    metrics = {"baseline": None, "best": {"step": 2, "wer": 0.5}, "train": {**train, "loss": 2.0}}
    summary = format_summary(TrainingReport(tmp_path, metrics, settings, first_process=True))
    assert "\n  precision    bf16 autocast: this CPU has AMX\n" in summary


@pytest.mark.e2e
def test_bf16_on_cpu_trains_and_evaluates_under_autocast_with_fp32_adapter_weights(
    tiny_model_dir, prepared_cache, tmp_path, capsys, monkeypatch
):
    """--precision bf16 on CPU through the Trainer (--bf16 with use_cpu: accelerate's CPU autocast): the
    training forward and the evaluations compute in bf16 on bf16 base weights, the LoRA weights stay fp32 in
    memory and in the saved adapter, and the summary says so."""
    build_model, built, seen = run_module.build_model, [], set()

    def record(module, inputs, output):  # inside the model's forward: under the autocast that wraps it
        seen.add(
            (module.training, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), output.dtype)
        )

    def recorded_build_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.get_base_model().proj_out.register_forward_hook(record)  # the logits
        built.append(model)
        return model

    monkeypatch.setattr(run_module, "build_model", recorded_build_model)
    output_dir = tmp_path / "outputs"
    code = main(
        [
            "--model", str(tiny_model_dir), "--data-dir", str(prepared_cache),
            "--output-dir", str(output_dir), "--max-steps", "2", *QUICK, "--precision", "bf16",
        ]
    )  # fmt: skip
    assert code == 0
    assert f"\n  precision    {training_precision('bf16')[1]}\n" in capsys.readouterr().out
    bf16 = (True, torch.bfloat16, torch.bfloat16)
    assert seen == {(True, *bf16), (False, *bf16)}  # training steps and evaluations, all under bf16 autocast
    (model,) = built
    trained = {parameter.dtype for parameter in model.parameters() if parameter.requires_grad}
    frozen = {parameter.dtype for parameter in model.parameters() if not parameter.requires_grad}
    assert (trained, frozen) == ({torch.float32}, {torch.bfloat16})
    saved = load_file(output_dir / "adapter" / "adapter_model.safetensors")
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    assert any(key.endswith("lora_B.weight") and tensor.abs().sum() > 0 for key, tensor in saved.items())


@pytest.mark.e2e
def test_early_stopping_patience_stops_training(tiny_model_dir, prepared_cache, tmp_path, capsys):
    """A learning rate of 0 leaves the weights, so every evaluation's WER equals the first: with patience
    2 the evaluations at steps 2 and 3 are the two without improvement (step 1 sets the best)."""
    output_dir = tmp_path / "outputs"
    code = main(
        [
            "--model", str(tiny_model_dir), "--data-dir", str(prepared_cache),
            "--output-dir", str(output_dir), "--max-steps", "20", *QUICK,
            "--eval-steps", "1", "--save-steps", "1", "--learning-rate", "0",
            "--early-stopping-patience", "2",
        ]
    )  # fmt: skip
    assert code == 0
    assert "3 steps (stopped early, before step 20)" in capsys.readouterr().out
    metrics, _, _ = _read(output_dir)
    assert metrics["train"]["global_step"] == 3
    assert [entry["step"] for entry in metrics["evaluations"]] == [1, 2, 3]
    assert metrics["best"]["step"] == 1


@pytest.mark.e2e
def test_batches_made_by_the_background_thread_train_as_a_loader_worker_does(
    tiny_model_dir, prepared_cache, tmp_path, capsys, monkeypatch
):
    """The default (no loader worker: a thread makes the next batches) changes nothing but where they are
    made: the same batches in the same order give the same adapter as a run with a loader process."""
    started: list[BackgroundBatches] = []

    class RecordedBackgroundBatches(BackgroundBatches):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(trainer_module, "BackgroundBatches", RecordedBackgroundBatches)
    adapters, threads = [], []
    for name, loader in (("thread", []), ("worker", ["--dataloader-num-workers", "1"])):
        output_dir = tmp_path / name
        code = main(
            [
                "--model", str(tiny_model_dir), "--data-dir", str(prepared_cache),
                "--output-dir", str(output_dir), "--max-steps", "3", *QUICK, *loader,
            ]
        )  # fmt: skip
        assert code == 0
        adapters.append(load_file(output_dir / "adapter" / "adapter_model.safetensors"))
        threads.append(len(started))
    capsys.readouterr()
    assert threads == [1, 1]  # one epoch made in the background by default, none with a worker
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][key], adapters[1][key]) for key in adapters[0])
    assert not [thread for thread in threading.enumerate() if thread.name == "background-batches"]


@pytest.mark.e2e
def test_ddp_two_cpu_processes(tiny_model_dir, prepared_cache, validation, tmp_path):
    output_dir = tmp_path / "ddp"
    result = _cli(
        "--model", str(tiny_model_dir), "--data-dir", str(prepared_cache), "--output-dir", str(output_dir),
        "--max-steps", "2", *QUICK,
        launcher=("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(SUMMARY) == 1  # only the first process prints
    metrics, predictions, config = _read(output_dir)
    assert config["resolved"]["world_size"] == 2
    assert len(predictions) == len(validation)  # no duplicates from the padded last batch
    # A loss averaged once, not multiplied by the process count (Whisper ignores num_items_in_batch).
    assert metrics["train"]["loss"] == pytest.approx(metrics["baseline"]["loss"], rel=0.2)


def test_language_other_than_the_caches_is_refused(tiny_model_dir, prepared_cache, tmp_path, capsys):
    code = main(["--model", str(tiny_model_dir), "--data-dir", str(prepared_cache), "--language", "en"])
    assert code == 2
    assert "the cache's labels are for" in capsys.readouterr().err


def _user_error_cases(tiny_model_dir: Path, prepared_cache: Path, root: Path) -> dict[str, list[str]]:
    other_tokenizer = root / "other-tokenizer"
    shutil.copytree(tiny_model_dir, other_tokenizer)
    processor = WhisperProcessor.from_pretrained(str(other_tokenizer))
    processor.tokenizer.add_tokens(["<|extra|>"])
    processor.save_pretrained(str(other_tokenizer))
    pickled = root / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    weights = load_file(pickled / "model.safetensors")
    (pickled / "model.safetensors").unlink()
    torch.save(weights, pickled / "pytorch_model.bin")
    typo = root / "typo.yaml"
    typo.write_text("learning_rat: 0.001\n", encoding="utf-8")
    (root / "empty").mkdir()
    model, data = ["--model", str(tiny_model_dir)], ["--data-dir", str(prepared_cache)]
    return {
        "no complete feature cache": [*model, "--data-dir", str(root / "empty")],
        "made with another tokenizer": ["--model", str(other_tokenizer), *data],
        r"unknown setting\(s\) in config file: learning_rat \(did you mean learning_rate\?\)": [
            str(typo),
            *model,
        ],
        "--load-in-8bit needs a CUDA GPU": [*model, *data, "--load-in-8bit"],
        "only a pickle checkpoint": ["--model", str(pickled), *data],
        "--model .*absent: the folder does not exist": ["--model", str(root / "absent"), *data],
        "no such folder, and not downloadable as a Hugging Face Hub model": [
            "--model", "whisper-pipeline-tests/no-such-model", *data,
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def user_errors(tiny_model_dir, prepared_cache, tmp_path_factory):
    """Each mistake run as a real command (all at once: they spend their time importing)."""
    cases = _user_error_cases(tiny_model_dir, prepared_cache, tmp_path_factory.mktemp("errors"))
    running = {
        message: subprocess.Popen(
            [sys.executable, "train_model.py", *args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for message, args in cases.items()
    }
    return {
        message: (process.wait(timeout=300), *process.communicate()) for message, process in running.items()
    }


@pytest.mark.e2e
@pytest.mark.parametrize(
    "message",
    [
        "no complete feature cache",
        "made with another tokenizer",
        r"unknown setting\(s\) in config file: learning_rat \(did you mean learning_rate\?\)",
        "--load-in-8bit needs a CUDA GPU",
        "only a pickle checkpoint",
        "--model .*absent: the folder does not exist",
        "no such folder, and not downloadable as a Hugging Face Hub model",
    ],
)
def test_user_errors_are_one_line_and_exit_2(user_errors, message):
    code, _, stderr = user_errors[message]
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert re.search(message, errors[0]), errors[0]
