"""A Whisper folder as transformers 5 saves it (WhisperProcessor.save_pretrained: the feature extractor nested
in processor_config.json, no preprocessor_config.json) through every stage: prepare, a short training,
evaluate, export merge and ctranslate2, transcribe."""

from __future__ import annotations

import json

import pytest
from faster_whisper import WhisperModel

from whisper_pipeline.cache import open_cache, processor_fingerprint
from whisper_pipeline.inference import evaluate, export, transcribe
from whisper_pipeline.prepare.augment import AugmentationSettings
from whisper_pipeline.prepare.run import PrepareArguments, run_prepare
from whisper_pipeline.testing.synthetic import LabelStudioExport, Utterance
from whisper_pipeline.train import run as train

pytestmark = pytest.mark.e2e


def test_a_transformers5_folder_goes_through_every_stage(
    transformers5_model_dir, speech_clips, tmp_path, capsys
):
    model = transformers5_model_dir
    annotations = LabelStudioExport(seed=7)
    for clip in speech_clips[:4]:
        annotations.add_task(str(clip.paths["wav"]), [Utterance(clip.text, 0.0, clip.duration)])
    cache = tmp_path / "cache"
    args = PrepareArguments(
        annotations=str(annotations.write(tmp_path / "export.json")), model=str(model), output_dir=str(cache),
        val_fraction=0.5, augment_copies=0, num_workers=1,
    )  # fmt: skip
    summary = run_prepare(args, AugmentationSettings(), environ={})
    assert summary.report["processor_fingerprint"] == processor_fingerprint(model)
    prepared = open_cache(cache, model_dir=model)
    assert len(prepared.train) > 0 and len(prepared.validation) > 0

    outputs, evaluation, merged, ct2 = (
        tmp_path / name for name in ("outputs", "evaluation", "merged", "ct2")
    )
    adapter = outputs / "adapter"
    steps = {
        "train": lambda: train.main(
            ["--model", str(model), "--data-dir", str(cache), "--output-dir", str(outputs),
             "--max-steps", "1", "--per-device-train-batch-size", "2", "--generation-max-length", "8",
             "--lora-r", "4", "--lora-alpha", "8", "--disable-tqdm", "true",
             "--long-form-max-new-tokens", "8"]
        ),
        "evaluate": lambda: evaluate.main(
            ["--model", str(model), "--adapter", str(adapter), "--data-dir", str(cache),
             "--output-dir", str(evaluation), "--max-new-tokens", "8", "--long-form", "false"]
        ),
        "merge": lambda: export.main(
            ["merge", "--model", str(model), "--adapter", str(adapter), "--output", str(merged)]
        ),
        # straight from the transformers 5 folder: faster-whisper reads only a flat preprocessor_config.json
        "ctranslate2": lambda: export.main(
            ["ctranslate2", "--model", str(model), "--output", str(ct2), "--quantization", "float32"]
        ),
    }  # fmt: skip
    for name, step in steps.items():
        assert step() == 0, name
    assert json.loads((evaluation / "evaluation.json").read_text(encoding="utf-8"))["examples"] > 0
    assert (merged / "model.safetensors").is_file()
    written = json.loads((ct2 / "preprocessor_config.json").read_text(encoding="utf-8"))
    nested = json.loads((model / "processor_config.json").read_text(encoding="utf-8"))["feature_extractor"]
    assert written == nested
    assert len(WhisperModel(str(ct2), device="cpu").feature_extractor.mel_filters) == nested["feature_size"]

    audio = str(speech_clips[0].paths["wav"])
    for folder in (model, ct2):  # transformers on the folder itself, faster-whisper on its export
        capsys.readouterr()
        flags = ["--model", str(folder), "--max-new-tokens", "4", "--language", "vi"]
        assert transcribe.main([audio, *flags]) == 0
        assert capsys.readouterr().out.count("\n") == 1  # one file's text (random weights: any text)
