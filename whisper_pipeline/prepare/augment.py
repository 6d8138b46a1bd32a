"""Augmented copies of training windows: the seed's audiomentations chain, seeded per window and copy.

The same samples, settings and seed give byte-identical audio in any process and in any order, so a
resumed or re-run stage 1 rebuilds exactly the same cache.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from whisper_pipeline.constants import SAMPLE_RATE
from whisper_pipeline.errors import ConfigError


@dataclass(frozen=True)
class AugmentationSettings:
    """The seed's audiomentations chain (gain, noise, time stretch, pitch shift), each step's range and
    probability settable from the config file or flags.

    Time stretch changes the length on purpose: the transcript covers the whole utterance, so it must not
    be cut off or padded to the original length.
    """

    gain_min_db: float = field(default=-6.0, metadata={"help": "Augmentation: lowest gain in dB."})
    gain_max_db: float = field(default=6.0, metadata={"help": "Augmentation: highest gain in dB."})
    gain_p: float = field(default=0.5, metadata={"help": "Augmentation: probability of the gain step."})
    noise_min_amplitude: float = field(
        default=0.001, metadata={"help": "Augmentation: lowest noise amplitude."}
    )
    noise_max_amplitude: float = field(
        default=0.015, metadata={"help": "Augmentation: highest noise amplitude."}
    )
    noise_p: float = field(default=0.5, metadata={"help": "Augmentation: probability of Gaussian noise."})
    stretch_min_rate: float = field(
        default=0.9, metadata={"help": "Augmentation: slowest time-stretch rate."}
    )
    stretch_max_rate: float = field(
        default=1.1, metadata={"help": "Augmentation: fastest time-stretch rate."}
    )
    stretch_p: float = field(default=0.5, metadata={"help": "Augmentation: probability of the time stretch."})
    pitch_min_semitones: float = field(default=-2.0, metadata={"help": "Augmentation: lowest pitch shift."})
    pitch_max_semitones: float = field(default=2.0, metadata={"help": "Augmentation: highest pitch shift."})
    pitch_p: float = field(default=0.5, metadata={"help": "Augmentation: probability of the pitch shift."})

    def __post_init__(self) -> None:
        """Reject ranges audiomentations would refuse mid-run (in a worker), while the user is still here."""
        ranges = {
            "gain": (self.gain_min_db, self.gain_max_db, -math.inf, math.inf),
            "noise": (self.noise_min_amplitude, self.noise_max_amplitude, 0.0, math.inf),
            "stretch": (self.stretch_min_rate, self.stretch_max_rate, 0.1, 10.0),
            "pitch": (self.pitch_min_semitones, self.pitch_max_semitones, -24.0, 24.0),
        }
        for step, (low, high, lowest, highest) in ranges.items():
            if not lowest <= low <= high <= highest:
                raise ConfigError(
                    f"augmentation {step}: need {lowest} <= min <= max <= {highest}, got {low} and {high}"
                )
        if self.noise_min_amplitude <= 0.0:
            raise ConfigError(f"augmentation noise_min_amplitude must be > 0, got {self.noise_min_amplitude}")
        for step in ("gain_p", "noise_p", "stretch_p", "pitch_p"):
            if not 0.0 <= getattr(self, step) <= 1.0:
                raise ConfigError(
                    f"augmentation {step} must be a probability in [0, 1], got {getattr(self, step)}"
                )


def _chain(settings: AugmentationSettings):
    """The audiomentations Compose; imported here, in the workers that augment (it imports scipy.signal
    and scipy.stats, slow to import), not in every process that reads AugmentationSettings."""
    from audiomentations import AddGaussianNoise, Compose, Gain, PitchShift, TimeStretch

    return Compose(
        [
            Gain(min_gain_db=settings.gain_min_db, max_gain_db=settings.gain_max_db, p=settings.gain_p),
            AddGaussianNoise(
                min_amplitude=settings.noise_min_amplitude,
                max_amplitude=settings.noise_max_amplitude,
                p=settings.noise_p,
            ),
            TimeStretch(
                min_rate=settings.stretch_min_rate,
                max_rate=settings.stretch_max_rate,
                leave_length_unchanged=False,
                p=settings.stretch_p,
            ),
            PitchShift(
                min_semitones=settings.pitch_min_semitones,
                max_semitones=settings.pitch_max_semitones,
                p=settings.pitch_p,
            ),
        ]
    )


_GLOBAL_RNG_LOCK = threading.Lock()


@contextmanager
def _seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed `random` and `np.random` (audiomentations draws from both), then put their state back.

    audiomentations 0.43 has no generator argument. The lock keeps two threads from interleaving their
    draws; callers outside this module see the global generators exactly as they left them.
    """
    with _GLOBAL_RNG_LOCK:
        python_state, numpy_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed([seed & 0xFFFFFFFF, seed >> 32])  # the legacy seeder takes 32-bit words
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def augmentation_seed(seed: int, window_id: str, copy_index: int) -> int:
    """A 64-bit seed for one augmented copy of one window: stable across processes and Python runs
    (sha256, not `hash`, which is salted per process)."""
    digest = hashlib.sha256(f"{seed}\0{window_id}\0{copy_index}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def augment(samples: np.ndarray, settings: AugmentationSettings, seed: int) -> np.ndarray:
    """One augmented copy of 16 kHz mono samples: the same (samples, settings, seed) give the same bytes.

    Time stretch and pitch shift run on Signalsmith Stretch (audiomentations' default method), which has no
    randomness of its own. The result is float32 clipped to [-1, 1] (gain can push peaks over full scale);
    it may be up to 1/stretch_min_rate times longer than the input.
    """
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"augmentation seed must be in [0, 2**64), got {seed}")
    chain = _chain(settings)
    with _seeded_global_rngs(seed):
        augmented = chain(samples=np.ascontiguousarray(samples, dtype=np.float32), sample_rate=SAMPLE_RATE)
    return np.clip(augmented, -1.0, 1.0).astype(np.float32, copy=False)
