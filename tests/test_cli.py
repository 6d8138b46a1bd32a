"""Every command's --help: our settings in titled groups (the same parser as train_model.py's), every field
still there, spelled with dashes, booleans as --x, --no-x, each default said once."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import get_type_hints

import pytest

from whisper_pipeline.demo import run as demo
from whisper_pipeline.inference import evaluate, export, preannotate, transcribe
from whisper_pipeline.prepare import run as prepare
from whisper_pipeline.prepare.augment import AugmentationSettings
from whisper_pipeline.train import arguments as train

# command: (its main, the arguments before --help, its settings' dataclasses, its help's group titles)
COMMANDS = {
    "prepare": (
        prepare.main,
        [],
        (prepare.PrepareArguments, AugmentationSettings),
        ["annotations", "audio", "segmentation and split", "augmentation", "features and cache", "workers"],
    ),
    "evaluate": (
        evaluate.main,
        [],
        (evaluate.EvaluateArguments,),
        [
            "data",
            "annotations (with --annotations or --project)",
            "audio",
            "model",
            "generation",
            "long-form",
            "outputs",
        ],
    ),
    "transcribe": (
        transcribe.main,
        [],
        (transcribe.TranscribeArguments,),
        ["model", "decoding", "audio", "outputs"],
    ),
    "preannotate": (
        preannotate.main,
        [],
        (preannotate.PreannotateArguments,),
        ["tasks", "labelling config", "audio", "model", "outputs"],
    ),
    "export merge": (export.main, ["merge"], (export.MergeArguments,), ["inputs", "outputs"]),
    "export ctranslate2": (
        export.main,
        ["ctranslate2"],
        (export.CTranslate2Arguments,),
        ["inputs", "outputs"],
    ),
    "demo": (demo.main, [], (demo.DemoArguments,), ["demo"]),
    "train": (
        train.parse_arguments,
        [],
        (train.DataArguments, train.ModelArguments, train.LoraArguments, train.PipelineTrainingArguments),
        [
            "data",
            "model",
            "LoRA",
            "training",
            "evaluation",
            "outputs",
            "Trainer settings (the other Seq2SeqTrainingArguments fields, transformers 5)",
        ],
    ),
}


def help_text(name: str, capsys) -> str:
    main, argv, _, _ = COMMANDS[name]
    with pytest.raises(SystemExit) as exit_request:
        main([*argv, "--help"])
    assert exit_request.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_groups_every_setting_under_its_title(name, capsys):
    text = help_text(name, capsys)
    titles = [line[:-1] for line in text.splitlines() if re.fullmatch(r"\S.*:", line)]
    assert titles == ["options", *COMMANDS[name][3]]  # every field placed: no catch-all "settings" group
    for dataclass_type in COMMANDS[name][2]:
        hints = get_type_hints(dataclass_type)
        for field in fields(dataclass_type):
            flag, kind = "--" + field.name.replace("_", "-"), hints[field.name]
            if not field.init or field.metadata.get("help") == "==SUPPRESS==":
                continue
            shown = f"{flag}, --no-{flag[2:]}" if kind is bool else flag  # a boolean: a pair of flags
            assert re.search(rf"^  {re.escape(shown)}[ ,\n]", text, re.MULTILINE), (name, flag)


@pytest.mark.parametrize("name", [name for name in COMMANDS if name != "train"])
def test_help_spells_dashes_and_says_each_default_once(name, capsys):
    text = help_text(name, capsys)
    assert not re.search(r"--[a-z0-9]+_[a-z0-9_]+", text)  # underscores are accepted, never shown
    entries = re.split(r"\n  (?=-)", text)
    assert [entry for entry in entries if entry.lower().count("default") > 1] == []
    assert text.startswith("usage: python -m " if name not in ("prepare",) else "usage: prepare_data.py ")
