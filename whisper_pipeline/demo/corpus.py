"""The demo's corpus: Vietnamese speech synthesised with espeak-ng from sentences shipped in the package,
several voices, recordings holding several utterances and noise bursts, and its Label Studio exports.
Held-out sentences, never spoken in the training corpus, get recordings and an export of their own."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from whisper_pipeline.cache import stable_hash
from whisper_pipeline.constants import SAMPLE_RATE
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
CORPUS_REVISION = 2  # bump when the corpus recipe changes, so an old corpus is rebuilt
NOVEL_SENTENCES = (
    "demo_sentences_vi_novel.txt"  # written for the demo: most of their words are not in SENTENCES
)
EXPORTS = ("train", "heldout", "novel")
NOISE_CLIPS = 3  # noise-only held-out clips


@dataclass(frozen=True)
class Corpus:
    """The synthesised recordings and their exports: the training pool; the held-out set (one clip per
    held-out sentence, long recordings of them with pauses and noise, and noise-only clips); and the novel
    set, sentences whose words are largely unseen in training."""

    audio: list[Path]
    train_export: Path
    heldout_export: Path
    novel_export: Path
    train_sentences: int
    heldout_sentences: int
    novel_sentences: int
    novel_unseen_word_share: float  # of the novel sentences' words, those in no training sentence
    audio_seconds: float


def demo_sentences(name: str = SENTENCES) -> list[str]:
    text = resources.files("whisper_pipeline.demo").joinpath("data", name).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def words(sentences: Sequence[str]) -> list[str]:
    return [word for sentence in sentences for word in re.findall(r"\w+", sentence.lower())]


def split_sentences(sentences: Sequence[str], heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """Held-out sentences never occur in training (as text, not only as recordings)."""
    unique = sorted(set(sentences))
    random.Random(seed).shuffle(unique)
    if not 0 < heldout < len(unique):
        raise PipelineError(f"--heldout-sentences must be in [1, {len(unique) - 1}], got {heldout}")
    return unique[heldout:], unique[:heldout]


def build_corpus(directory: Path, args: DemoArguments) -> Corpus:
    """Synthesise (or reuse, when the recipe is unchanged) the audio files and the exports."""
    recipe = {
        "revision": CORPUS_REVISION,
        "recordings": args.recordings,
        "utterances_per_recording": args.utterances_per_recording,
        "heldout": args.heldout_sentences,
        "long_recordings": [args.long_recordings, args.long_seconds],
        "seed": args.seed,
        "sentences": stable_hash([demo_sentences(), demo_sentences(NOVEL_SENTENCES)]),
    }
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest["recipe"] == recipe and all((directory / name).is_file() for name in manifest["audio"]):
            return _corpus(directory, manifest)

    pool, heldout = split_sentences(demo_sentences(), args.heldout_sentences, args.seed)
    novel = demo_sentences(NOVEL_SENTENCES)
    rng = random.Random(args.seed)
    (directory / "audio").mkdir(parents=True, exist_ok=True)
    exports = {kind: LabelStudioExport(seed=args.seed + offset) for offset, kind in enumerate(EXPORTS)}
    audio: list[str] = []
    seconds = 0.0
    used = 0
    plan = [("train", index) for index in range(args.recordings)]
    plan += [("heldout", index) for index in range(len(heldout))]
    plan += [("long", index) for index in range(args.long_recordings)]
    plan += [("noise", index) for index in range(NOISE_CLIPS)]
    plan += [("novel", index) for index in range(len(novel))]
    for kind, index in tqdm(plan, desc="synthesising the corpus", unit="recording"):
        voice = (VOICES[index % len(VOICES)], rng.choice(SPEEDS), rng.choice(PITCHES))

        def speak(text: str, voice: tuple[str, int, int] = voice) -> Part:
            return Part(synthesize(text, voice[0], speed=voice[1], pitch=voice[2]), text)

        gap = 0.4
        if kind == "train":
            count = rng.randint(1, args.utterances_per_recording)
            parts = [speak(pool[(used + offset) % len(pool)]) for offset in range(count)]
            used += count
            if index % 4 == 1:  # a noise burst the model must learn to ignore
                parts.insert(
                    rng.randint(0, len(parts)), Part(noise(0.8, seed=args.seed + index), label=NOISE)
                )
        elif kind == "long":  # held-out sentences in turn, with pauses and a noise burst, past --long-seconds
            parts, gap = [], 0.8
            while (
                sum(len(part.samples) for part in parts) / SAMPLE_RATE + gap * len(parts) < args.long_seconds
            ):
                parts.append(speak(heldout[(index * len(heldout) // 2 + len(parts)) % len(heldout)]))
            parts.insert(len(parts) // 2, Part(noise(1.5, seed=args.seed + 100 + index), label=NOISE))
        elif kind == "noise":  # nothing but noise, which must stay untranscribed
            parts = [Part(noise(1.0 + index, seed=args.seed + 200 + index), label=NOISE)]
        else:
            parts = [speak((heldout if kind == "heldout" else novel)[index])]
        samples, regions = compose(parts, gap_s=gap)
        name = f"audio/{kind}_{index:04d}.{FORMATS[index % len(FORMATS)]}"
        (directory / name).write_bytes(encode_audio(samples, SAMPLE_RATE, name.rsplit(".", 1)[1]))
        export = exports["train" if kind == "train" else "novel" if kind == "novel" else "heldout"]
        export.add_task(f"s3://{BUCKET}/{name}", regions, duration=len(samples) / SAMPLE_RATE)
        audio.append(name)
        seconds += len(samples) / SAMPLE_RATE
    for kind, export in exports.items():
        export.write(directory / f"{kind}_export.json")
    trained = set(words(pool))
    manifest = {
        "recipe": recipe,
        "audio": audio,
        "train_sentences": min(used, len(pool)),
        "heldout_sentences": len(heldout),
        "novel_sentences": len(novel),
        "novel_unseen_word_share": round(sum(w not in trained for w in words(novel)) / len(words(novel)), 3),
        "audio_seconds": round(seconds, 2),
    }
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return _corpus(directory, manifest)


def _corpus(directory: Path, manifest: dict[str, Any]) -> Corpus:
    return Corpus(
        audio=[directory / name for name in manifest["audio"]],
        train_export=directory / "train_export.json",
        heldout_export=directory / "heldout_export.json",
        novel_export=directory / "novel_export.json",
        train_sentences=manifest["train_sentences"],
        heldout_sentences=manifest["heldout_sentences"],
        novel_sentences=manifest["novel_sentences"],
        novel_unseen_word_share=manifest["novel_unseen_word_share"],
        audio_seconds=manifest["audio_seconds"],
    )
