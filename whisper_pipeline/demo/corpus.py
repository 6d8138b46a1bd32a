"""The demo's corpus: Vietnamese speech synthesised with espeak-ng from sentences shipped in the package,
several voices, recordings holding several utterances and noise bursts, and its Label Studio exports.
Held-out sentences, never spoken in the training corpus, get recordings and an export of their own."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from whisper_pipeline.cache import stable_hash
from whisper_pipeline.errors import PipelineError
from whisper_pipeline.testing.synthetic import (
    NOISE,
    LabelStudioExport,
    Part,
    compose,
    encode_audio,
    noise,
    synthesize,
)

if TYPE_CHECKING:
    from whisper_pipeline.demo.run import DemoArguments

BUCKET = "demo-speech"
SENTENCES = "demo_sentences_vi.txt"
# espeak-ng's Vietnamese voices (northern, central, southern), each at a few speeds and pitches.
VOICES = ("vi", "vi-vn-x-central", "vi-vn-x-south")
SPEEDS = (135, 150, 165)
PITCHES = (40, 50, 60)
FORMATS = ("flac", "flac", "mp3", "ogg")  # mostly FLAC, as archives are; lossy formats too
CORPUS_REVISION = 1  # bump when the corpus recipe changes, so an old corpus is rebuilt


@dataclass(frozen=True)
class Corpus:
    """The synthesised recordings and their two exports (training pool, held-out sentences)."""

    audio: list[Path]
    train_export: Path
    heldout_export: Path
    train_sentences: int
    heldout_sentences: int
    audio_seconds: float


def demo_sentences() -> list[str]:
    text = resources.files("whisper_pipeline.demo").joinpath("data", SENTENCES).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def split_sentences(sentences: Sequence[str], heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Held-out sentences never occur in training (as text, not only as recordings)."""
    unique = sorted(set(sentences))
    random.Random(seed).shuffle(unique)
    if not 0 < heldout < len(unique):
        raise PipelineError(f"--heldout-sentences must be in [1, {len(unique) - 1}], got {heldout}")
    return unique[heldout:], unique[:heldout]


def build_corpus(directory: Path, args: DemoArguments) -> Corpus:
    """Synthesise (or reuse, when the recipe is unchanged) the audio files and both exports."""
    recipe = {
        "revision": CORPUS_REVISION,
        "recordings": args.recordings,
        "utterances_per_recording": args.utterances_per_recording,
        "heldout": args.heldout_sentences,
        "seed": args.seed,
        "sentences": stable_hash(demo_sentences()),
    }
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest["recipe"] == recipe and all((directory / name).is_file() for name in manifest["audio"]):
            return _corpus(directory, manifest)

    pool, heldout = split_sentences(demo_sentences(), args.heldout_sentences, args.seed)
    rng = random.Random(args.seed)
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    train_export, heldout_export = LabelStudioExport(seed=args.seed), LabelStudioExport(seed=args.seed + 1)
    audio: list[str] = []
    seconds = 0.0
    used = 0
    plan = [("train", index) for index in range(args.recordings)]
    plan += [("heldout", index) for index in range(len(heldout))]
    for kind, index in tqdm(plan, desc="synthesising the corpus", unit="recording"):
        voice = (VOICES[index % len(VOICES)], rng.choice(SPEEDS), rng.choice(PITCHES))
        if kind == "heldout":
            texts = [heldout[index]]
        else:
            count = rng.randint(1, args.utterances_per_recording)
            texts = [pool[(used + offset) % len(pool)] for offset in range(count)]
            used += count
        parts = [Part(synthesize(text, voice[0], speed=voice[1], pitch=voice[2]), text) for text in texts]
        if kind == "train" and index % 4 == 1:  # a noise burst the model must learn to ignore
            parts.insert(rng.randint(0, len(parts)), Part(noise(0.8, seed=args.seed + index), label=NOISE))
        samples, regions = compose(parts)
        name = f"audio/{kind}_{index:04d}.{FORMATS[index % len(FORMATS)]}"
        (directory / name).write_bytes(encode_audio(samples, 16_000, name.rsplit(".", 1)[1]))
        export = train_export if kind == "train" else heldout_export
        export.add_task(f"s3://{BUCKET}/{name}", regions, duration=len(samples) / 16_000)
        audio.append(name)
        seconds += len(samples) / 16_000
    train_export.write(directory / "train_export.json")
    heldout_export.write(directory / "heldout_export.json")
    manifest = {
        "recipe": recipe,
        "audio": audio,
        "train_sentences": min(used, len(pool)),
        "heldout_sentences": len(heldout),
        "audio_seconds": round(seconds, 2),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return _corpus(directory, manifest)


def _corpus(directory: Path, manifest: dict[str, Any]) -> Corpus:
    return Corpus(
        audio=[directory / name for name in manifest["audio"]],
        train_export=directory / "train_export.json",
        heldout_export=directory / "heldout_export.json",
        train_sentences=manifest["train_sentences"],
        heldout_sentences=manifest["heldout_sentences"],
        audio_seconds=manifest["audio_seconds"],
    )
