"""The seed's stage 1, re-implemented faithfully as the benchmark's baseline (not used by the pipeline).

    python -m benchmarks.seed_baseline --annotations export.json --output-dir DIR --model model

Step for step what the seed did: the Label Studio export read into a list of tasks, then
`datasets.Dataset.from_list(tasks).map(fn, num_proc=4)` over whole files, where `fn` makes a boto3 client,
downloads the file, decodes it with `librosa.load(sr=16000)`, cuts each region, adds one augmented copy of
each training region (audiomentations), computes the padded float32 log-mel with `WhisperFeatureExtractor`
(80 x 3000 whatever the length) and tokenizes the text; finally `save_to_disk`. No thread limits, no
resume, no skips. Only the split comes from the pipeline (`assign_splits`), so both sides do the same work.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import boto3
import datasets
import librosa
from audiomentations import AddGaussianNoise, Compose, Gain, PitchShift, TimeStretch
from transformers import WhisperProcessor

from whisper_pipeline.cache import TRAIN
from whisper_pipeline.prepare.windows import assign_splits

SAMPLE_RATE = 16_000
EXCLUDED_LABELS = {"noise"}


def read_tasks(export_path: Path, *, seed: int, val_fraction: float) -> list[dict[str, Any]]:
    """The seed's parser: first annotation of each task, textarea results joined to their region's label."""
    tasks = []
    for task in json.loads(export_path.read_text(encoding="utf-8")):
        results = task["annotations"][0]["result"] if task["annotations"] else []
        labels = {r["id"]: r["value"]["labels"] for r in results if r["type"] == "labels"}
        regions = [
            {"start": r["value"]["start"], "end": r["value"]["end"], "text": " ".join(r["value"]["text"])}
            for r in results
            if r["type"] == "textarea" and not EXCLUDED_LABELS & {x.lower() for x in labels.get(r["id"], [])}
        ]
        if regions:
            tasks.append({"id": task["id"], "audio": task["data"]["audio"], "regions": regions})
    splits = assign_splits([task["audio"] for task in tasks], seed=seed, val_fraction=val_fraction)
    return [{**task, "split": splits[task["audio"]]} for task in tasks]


def augmentation_chain() -> Compose:
    """The seed's chain with its ranges; the time stretch keeps its new length, as the pipeline's does."""
    return Compose(
        [
            Gain(min_gain_db=-6.0, max_gain_db=6.0, p=0.5),
            AddGaussianNoise(min_amplitude=0.001, max_amplitude=0.015, p=0.5),
            TimeStretch(min_rate=0.9, max_rate=1.1, leave_length_unchanged=False, p=0.5),
            PitchShift(min_semitones=-2.0, max_semitones=2.0, p=0.5),
        ]
    )


def process_file(batch: dict[str, list], processor: WhisperProcessor, augment: Compose) -> dict[str, list]:
    """One whole recording (batch_size=1) -> one row per region and per augmented copy."""
    client = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT_URL"])
    rows: dict[str, list] = {"input_features": [], "labels": [], "text": [], "audio": [], "split": []}
    for uri, regions, split in zip(batch["audio"], batch["regions"], batch["split"], strict=True):
        location = urlparse(uri)
        body = client.get_object(Bucket=location.netloc, Key=location.path.lstrip("/"))["Body"].read()
        audio, _ = librosa.load(io.BytesIO(body), sr=SAMPLE_RATE)
        for region in regions:
            segment = audio[int(region["start"] * SAMPLE_RATE) : int(region["end"] * SAMPLE_RATE)]
            variants = (
                [segment, augment(samples=segment, sample_rate=SAMPLE_RATE)] if split == TRAIN else [segment]
            )
            for samples in variants:
                features = processor.feature_extractor(
                    samples, sampling_rate=SAMPLE_RATE, return_tensors="np"
                )
                rows["input_features"].append(features.input_features[0])
                rows["labels"].append(processor.tokenizer(region["text"]).input_ids)
                rows["text"].append(region["text"])
                rows["audio"].append(uri)
                rows["split"].append(split)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m benchmarks.seed_baseline", description=__doc__.split("\n")[0])
    parser.add_argument("--annotations", required=True, help="Label Studio full JSON export (local path)")
    parser.add_argument("--output-dir", required=True, help="where save_to_disk writes")
    parser.add_argument("--model", default="model", help="Whisper directory (processor files)")
    parser.add_argument("--language", default="vi")
    parser.add_argument("--num-proc", type=int, default=4, help="datasets.map processes (the seed's 4)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    args = parser.parse_args(argv)
    tasks = read_tasks(Path(args.annotations), seed=args.seed, val_fraction=args.val_fraction)
    processor = WhisperProcessor.from_pretrained(args.model)
    processor.tokenizer.set_prefix_tokens(language=args.language, task="transcribe", predict_timestamps=False)
    dataset = datasets.Dataset.from_list(tasks).map(
        process_file,
        batched=True,
        batch_size=1,
        num_proc=args.num_proc,
        remove_columns=["id", "regions"],
        fn_kwargs={"processor": processor, "augment": augmentation_chain()},
    )
    dataset.save_to_disk(args.output_dir)
    summary = {"rows": len(dataset), "train_rows": dataset["split"].count(TRAIN), "recordings": len(tasks)}
    Path(args.output_dir, "seed_summary.json").write_text(json.dumps(summary))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
