"""Training input benchmark: the cache -> padded batches path, against one training step.

    python -m benchmarks.train_input [--recordings 24] [--batch-size 8] [--steps 3]

Builds (or reuses) a small feature cache from the synthetic corpus of benchmarks/prepare.py, then measures
on this machine:

1. the input path alone: open_cache, the training split as CacheRows (views of the Arrow rows),
   WhisperDataCollator (compact float16 batches) and a torch DataLoader, in examples per second with 0
   loader workers (one core) and with min(4, cores) worker processes; and `model_inputs`, the padding to the
   model's [8, 80, 3000] input that WhisperTrainer does on the device, here on this CPU (counted as input
   cost on this CPU);
2. one training step of whisper-base with a LoRA adapter (r 32 on the default targets, batch 8, fp32 on
   this CPU, AdamW), timed over a few steps after a warm-up, and its FLOPs (torch's FlopCounterMode);
3. the input time the training loop actually waits for per step when a step takes as long as an H100's or
   an H100 MIG 1g.10gb slice's would: a loop that sleeps one estimated step between batches and times
   each `next()`, for four ways batches can reach it: made in the loop (0 workers); made ahead by
   WhisperTrainer's BackgroundBatches thread (0 workers: the Trainer's default, the one the goals hold);
   received from worker processes by the loop; and received from them by a thread that hands them over
   through a queue, as torch's pin-memory thread does with CUDA (emulated: torch runs no such thread
   without an accelerator). Each with the CPU per batch of the thread that takes the batches from the
   loader; plus the device padding on those GPUs, estimated from the bytes it moves.

The GPU step times are ESTIMATES, not measurements: the measured FLOPs of the step divided by a documented
peak (see H100_BF16_DENSE_FLOPS) at the best documented utilisation (MFU). A 74 M-parameter model reaches
far less than that, so the estimated steps are lower bounds and the input share they give an upper bound.
The device padding time on those GPUs is an estimate too: its memory traffic over the documented bandwidth.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.flop_counter import FlopCounterMode
from transformers import WhisperConfig

from benchmarks.prepare import (
    CORES,
    LANGUAGE,
    SEED,
    build_corpus,
    markdown_table,
    publish,
    serve_corpus,
    write_export,
)
from whisper_pipeline.audio import AugmentationSettings
from whisper_pipeline.batches import BackgroundBatches, CacheRows, model_inputs
from whisper_pipeline.cache import open_cache
from whisper_pipeline.constants import N_FRAMES
from whisper_pipeline.prepare import PrepareArguments, run_prepare
from whisper_pipeline.pretrained import ensure_pretrained
from whisper_pipeline.train import (
    BACKGROUND_STEPS,
    DEFAULT_LEARNING_RATE,
    DataArguments,
    LoraArguments,
    ModelArguments,
    WhisperDataCollator,
    build_model,
)

# NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100): H100 SXM BF16 Tensor Core
# 1,979 TFLOPS "with sparsity", half of it dense: 989.4 TFLOPS.
H100_BF16_DENSE_FLOPS = 989.4e12
# NVIDIA Multi-Instance GPU User Guide, H100 80GB profiles: 1g.10gb is one of 7 compute slices.
MIG_1G_SHARE = 1 / 7
# NVIDIA H100 datasheet: H100 SXM GPU memory bandwidth 3.35 TB/s; the MIG User Guide gives a 1g.10gb slice
# 1 of the 8 memory slices of an H100 80GB, and memory bandwidth in proportion.
H100_MEMORY_BYTES_PER_S = 3.35e12
MIG_1G_MEMORY_SHARE = 1 / 8
# model_inputs on a GPU: the cast and the where read and write the compact frames, the cat reads them and
# writes the padded input: at most 6 passes over the padded bf16 input's bytes.
PADDING_PASSES = 6
BF16_BYTES = 2
# PaLM (Chowdhery et al. 2022, arXiv:2204.02311, Table 3): 46.2% model FLOPs utilisation, the best
# documented figure for training at scale; whisper-base (74 M parameters, batch 8) gets far less.
BEST_DOCUMENTED_MFU = 0.462
SOURCES = {
    "h100_bf16_dense_flops": "NVIDIA H100 datasheet: 1,979 TFLOPS BF16 with sparsity, 989.4 dense",
    "mig_1g_share": "NVIDIA MIG User Guide, H100 80GB: 1g.10gb is 1 of 7 compute slices",
    "mfu": "PaLM, Chowdhery et al. 2022 (arXiv:2204.02311), Table 3: 46.2% MFU",
    "h100_memory_bandwidth": "NVIDIA H100 datasheet: H100 SXM 3.35 TB/s",
    "mig_1g_memory_share": "NVIDIA MIG User Guide, H100 80GB: 1g.10gb has 1 of 8 memory slices",
}
ESTIMATE_NOTE = (
    "GPU steps are estimates, not measurements: the measured FLOPs of the step / (H100 BF16 dense peak "
    "989.4 TFLOPS; 1/7 of it for a MIG 1g.10gb slice) at 46.2% MFU, the best documented; real steps of so "
    "small a model are longer, so these are lower bounds. Device padding on them: 6 passes over the padded "
    "bf16 input at the H100 SXM's 3.35 TB/s (1/8 of it on a MIG 1g.10gb slice), kernel launches not counted."
)
GOAL_INPUT_SHARE = 0.02
LOADER_WORKERS = 4  # loader processes compared with the Trainer's default (none), at most one per core
PREFETCH_FACTOR = 2  # torch DataLoader's default: batches in flight per worker
TRAINER_SETTING = "0+background"  # PipelineTrainingArguments' default: WhisperTrainer's background thread


@dataclass(frozen=True)
class LoaderSetting:
    """How batches reach the training loop: loader processes, and the thread that takes them if any."""

    workers: int
    thread: str  # "" (the loop takes them), "background" (BackgroundBatches), "handover" (pin-memory-like)
    description: str


def loader_settings(workers: int) -> dict[str, LoaderSetting]:
    return {
        "0": LoaderSetting(0, "", "no workers, made in the loop (the Trainer without the thread)"),
        TRAINER_SETTING: LoaderSetting(0, "background", "no workers, made ahead by a background thread"),
        str(workers): LoaderSetting(workers, "", f"{workers} worker processes, received by the loop"),
        f"{workers}+handover": LoaderSetting(
            workers, "handover", f"{workers} worker processes, received by a pin-memory-like thread"
        ),
    }


WARMUP_BATCHES = 3


def build_cache(workdir: Path, model: Path, recordings: int) -> Path:
    """A cache of the first `recordings` of the benchmark corpus (reused while it is current)."""
    corpus_dir = workdir / "corpus"
    corpus = build_corpus(corpus_dir, recordings)
    export = write_export(corpus, workdir / f"train_input_export_{recordings}.json")
    output = workdir / "train_input_cache"
    with serve_corpus(corpus_dir, corpus, workdir / "s3") as endpoints:
        args = PrepareArguments(
            annotations=str(export), output_dir=str(output), model=str(model), language=LANGUAGE, seed=SEED
        )
        run_prepare(args, AugmentationSettings(), environ=endpoints["loopback"])
    return output


def _loader(
    dataset: CacheRows, collator: WhisperDataCollator, batch_size: int, workers: int, batches: int
) -> DataLoader:
    """Random batches with replacement, so that a small cache feeds any number of batches."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=batch_size * batches)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collator,
        persistent_workers=workers > 0,
    )


def loader_throughput(
    dataset: CacheRows, collator: WhisperDataCollator, batch_size: int, workers: int, batches: int
) -> float:
    """Examples per second, free-running, after WARMUP_BATCHES (worker start-up excluded)."""
    iterator = iter(_loader(dataset, collator, batch_size, workers, batches + WARMUP_BATCHES))
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    started = time.perf_counter()
    for _ in iterator:
        pass
    return batch_size * batches / (time.perf_counter() - started)


def cpu_padding(
    dataset: CacheRows, collator: WhisperDataCollator, batch_size: int, batches: int
) -> dict[str, float]:
    """Mean seconds of `model_inputs` per batch on this CPU (fp32, the model's dtype here), and the mean
    bytes of the compact features the loader hands over, against those of the padded float32 input."""
    loaded = list(_loader(dataset, collator, batch_size, 0, batches + WARMUP_BATCHES))
    for batch in loaded[:WARMUP_BATCHES]:
        model_inputs(batch, dtype=torch.float32, device="cpu")
    started = time.perf_counter()
    for batch in loaded[WARMUP_BATCHES:]:
        padded = model_inputs(batch, dtype=torch.float32, device="cpu")["input_features"]
    seconds = (time.perf_counter() - started) / batches
    compact = sum(batch["input_features"].nbytes for batch in loaded[WARMUP_BATCHES:]) / batches
    return {"seconds": seconds, "compact_bytes": compact, "padded_fp32_bytes": float(padded.nbytes)}


def _timed(source: Iterator[dict], cpu: list[float]) -> Iterator[dict]:
    """The items of `source`; the CPU seconds of the thread that takes them accumulate in cpu[0]."""
    cpu.append(0.0)
    while True:
        started = time.thread_time()
        try:
            item = next(source)
        except StopIteration:
            return
        finally:
            cpu[0] += time.thread_time() - started
        yield item


def _handed_over(batches: Iterator[dict], depth: int) -> Iterator[dict]:
    """`batches` received by a thread and handed over through a queue, as torch's pin-memory thread receives
    them from the workers when pin_memory is on (without an accelerator torch runs no such thread, so it is
    emulated here, without the page-locked copy)."""
    handover: queue.Queue = queue.Queue(maxsize=depth)
    end = object()

    def receive() -> None:
        for batch in batches:
            handover.put(batch)
        handover.put(end)

    threading.Thread(target=receive, name="handover", daemon=True).start()
    while (batch := handover.get()) is not end:
        yield batch


def waited_per_step(
    dataset: CacheRows,
    collator: WhisperDataCollator,
    batch_size: int,
    setting: LoaderSetting,
    batches: int,
    step_s: float,
) -> dict[str, float]:
    """Mean seconds the training loop waits in next() when each step takes `step_s` (slept: the CPU is free
    for the loader meanwhile, as it is while a GPU computes), and the CPU seconds per batch of the thread
    that takes the batches from the loader (the loop's own, when no thread does)."""
    loader = _loader(dataset, collator, batch_size, setting.workers, batches + WARMUP_BATCHES)
    cpu: list[float] = []
    timed = _timed(iter(loader), cpu)
    if setting.thread == "background":  # what WhisperTrainer does without workers
        iterator: Iterator[dict] = BackgroundBatches(timed, BACKGROUND_STEPS)
    elif setting.thread == "handover":
        iterator = _handed_over(timed, PREFETCH_FACTOR * setting.workers)
    else:
        iterator = timed
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    waited = 0.0
    for _ in range(batches):
        started = time.perf_counter()
        next(iterator)
        waited += time.perf_counter() - started
        time.sleep(step_s)
    for _ in iterator:  # the end: the taking thread's CPU time is then complete
        pass
    return {"waited": waited / batches, "taker_cpu": cpu[0] / (batches + WARMUP_BATCHES)}


def training_step(
    model_dir: Path, batches: Iterator[Mapping[str, torch.Tensor]], steps: int
) -> dict[str, float]:
    """whisper-base + a new LoRA adapter as train_model.py builds it, fp32 on CPU: FLOPs of one step (the
    warm-up) and the mean time of `steps` more."""
    model = build_model(
        DataArguments(),
        ModelArguments(model=str(model_dir)),
        LoraArguments(),
        language=LANGUAGE,
        task="transcribe",
        precision="fp32",
    )
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=DEFAULT_LEARNING_RATE
    )

    def step() -> None:
        batch = model_inputs(next(batches), dtype=torch.float32, device="cpu")  # as WhisperTrainer does
        loss = model(input_features=batch["input_features"], labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    trainable, total = model.get_nb_trainable_parameters()
    return {
        "flops": float(counter.get_total_flops()),
        "seconds": (time.perf_counter() - started) / steps,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "torch_threads": torch.get_num_threads(),
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    workdir, model = Path(args.workdir).resolve(), Path(args.model).resolve()
    ensure_pretrained(model)
    cache_dir = build_cache(workdir, model, args.recordings)
    cache = open_cache(cache_dir, model_dir=model)
    train = CacheRows(cache.train)  # as train.py's _splits gives it
    collator = WhisperDataCollator(WhisperConfig.from_pretrained(model).decoder_start_token_id)
    workers = min(LOADER_WORKERS, CORES)
    batch = args.batch_size
    counts = (0, workers)

    print(f"loader throughput on {len(train)} training rows ...", flush=True)
    throughput = {
        count: loader_throughput(train, collator, batch, count, args.loader_batches) for count in counts
    }
    padding = cpu_padding(train, collator, batch, args.loader_batches)
    print("training step ...", flush=True)
    step_batches = iter(_loader(train, collator, batch, 0, args.steps + 1))
    cpu_step = training_step(model, step_batches, args.steps)
    h100_step = cpu_step["flops"] / (H100_BF16_DENSE_FLOPS * BEST_DOCUMENTED_MFU)
    mig_step = h100_step / MIG_1G_SHARE
    padding_traffic = PADDING_PASSES * BF16_BYTES * batch * train[0].frames.shape[1] * N_FRAMES
    device_padding = {
        "h100": padding_traffic / H100_MEMORY_BYTES_PER_S,
        "mig_1g": padding_traffic / (H100_MEMORY_BYTES_PER_S * MIG_1G_MEMORY_SHARE),
    }
    gpu_steps = {"h100": h100_step, "mig_1g": mig_step}
    print("waiting time per step at the estimated GPU step times ...", flush=True)
    settings = loader_settings(workers)
    waits = {
        name: {
            label: waited_per_step(train, collator, batch, setting, args.wait_batches, step_s)
            for label, setting in settings.items()
        }
        for name, step_s in gpu_steps.items()
    }
    # On CPU the Trainer loads in the training process and pads there too: counted as if in the loop.
    input_cpu = batch / throughput[0] + padding["seconds"]
    gpu_input = {name: waits[name][TRAINER_SETTING]["waited"] + device_padding[name] for name in gpu_steps}
    shares = {
        "cpu": input_cpu / cpu_step["seconds"],
        **{name: gpu_input[name] / gpu_steps[name] for name in gpu_steps},
    }
    goals = [
        {
            "goal": f"input < {GOAL_INPUT_SHARE:.0%} of a step: this CPU (measured; 0 workers, padding)",
            "measured": f"{shares['cpu']:.2%} ({1000 * input_cpu:.1f} ms of {cpu_step['seconds']:.2f} s)",
            "passed": shares["cpu"] < GOAL_INPUT_SHARE,
        },
        *(
            {
                "goal": f"input < {GOAL_INPUT_SHARE:.0%} of a step: {label} (estimated; the Trainer's "
                "default: no loader workers, batches made by a background thread; device padding)",
                "measured": f"{shares[name]:.2%} ({1000 * gpu_input[name]:.3f} ms of "
                f"{1000 * gpu_steps[name]:.1f} ms)",
                "passed": shares[name] < GOAL_INPUT_SHARE,
            }
            for name, label in (("h100", "H100"), ("mig_1g", "MIG 1g.10gb"))
        ),
    ]
    document = {
        "machine": {"cores": CORES, "load_average_at_end": os.getloadavg()},
        "cache": {"rows": len(train), "recordings": args.recordings, "fingerprint": cache.fingerprint},
        "batch_size": batch,
        "loader_examples_per_second": {str(count): round(value, 1) for count, value in throughput.items()},
        "cpu_padding": {
            "seconds_per_batch": round(padding["seconds"], 6),
            "compact_feature_bytes_per_batch": round(padding["compact_bytes"]),
            "padded_fp32_bytes_per_batch": round(padding["padded_fp32_bytes"]),
        },
        "cpu_step": {
            key: round(value, 4) if isinstance(value, float) else value for key, value in cpu_step.items()
        },
        "estimates": {
            "note": ESTIMATE_NOTE,
            "sources": SOURCES,
            "h100_step_seconds": round(h100_step, 6),
            "mig_1g_step_seconds": round(mig_step, 6),
            "h100_device_padding_seconds": round(device_padding["h100"], 7),
            "mig_1g_device_padding_seconds": round(device_padding["mig_1g"], 7),
        },
        "waited_per_step_seconds": {
            name: {label: round(value["waited"], 6) for label, value in by_label.items()}
            for name, by_label in waits.items()
        },
        "taker_cpu_seconds_per_batch": {
            name: {label: round(value["taker_cpu"], 6) for label, value in by_label.items()}
            for name, by_label in waits.items()
        },
        "settings": {label: setting.description for label, setting in settings.items()},
        "trainer_setting": TRAINER_SETTING,
        "input_share_of_step": {name: round(value, 5) for name, value in shares.items()},
        "goals": goals,
    }
    document["markdown"] = markdown(document)
    document["wall_seconds"] = round(time.perf_counter() - started, 1)
    return document


def markdown(document: Mapping[str, Any]) -> str:
    throughput, batch = document["loader_examples_per_second"], document["batch_size"]
    estimates, waits = document["estimates"], document["waited_per_step_seconds"]
    cpu, padding = document["cpu_step"], document["cpu_padding"]
    pad_s = padding["seconds_per_batch"]
    loader = [
        [f"loader, {count} workers", f"{value:.0f}", f"{1000 * batch / value:.2f} ms"]
        for count, value in throughput.items()
    ]
    input_s = batch / throughput["0"] + pad_s
    loader += [
        [
            f"padding to [{batch}, 80, 3000] fp32 on this CPU (on a GPU: on the device)",
            f"{batch / pad_s:.0f}",
            f"{1000 * pad_s:.2f} ms",
        ],
        [
            "input path on this CPU: loader (0 workers) + padding",
            f"{batch / input_s:.0f}",
            f"{1000 * input_s:.2f} ms",
        ],
    ]
    steps = [
        [
            "training step, this CPU (measured, fp32)",
            f"{batch / cpu['seconds']:.2f}",
            f"{cpu['seconds']:.2f} s",
        ],
        [
            "training step, H100 (estimate, lower bound)",
            f"{batch / estimates['h100_step_seconds']:.0f}",
            f"{1000 * estimates['h100_step_seconds']:.1f} ms",
        ],
        [
            "training step, H100 MIG 1g.10gb (estimate, lower bound)",
            f"{batch / estimates['mig_1g_step_seconds']:.0f}",
            f"{1000 * estimates['mig_1g_step_seconds']:.1f} ms",
        ],
    ]
    taker_cpu = document["taker_cpu_seconds_per_batch"]
    waited = [
        [
            description + (" (the Trainer's default)" if label == TRAINER_SETTING else ""),
            *(
                f"{1000 * figures[name][label]:.3f} ms"
                for name in ("h100", "mig_1g")
                for figures in (waits, taker_cpu)
            ),
        ]
        for label, description in document["settings"].items()
    ]
    padding_row = [
        "device padding per step (estimate)",
        *(
            cell
            for name in ("h100", "mig_1g")
            for cell in (f"{1000 * estimates[f'{name}_device_padding_seconds']:.4f} ms", "")
        ),
    ]
    waited_header = [
        "batches reach the loop",
        "waited per step, H100 step",
        "CPU per batch of the taking thread, H100 step",
        "waited per step, MIG 1g.10gb step",
        "CPU per batch of the taking thread, MIG step",
    ]
    goals = [
        [goal["goal"], goal["measured"], "PASS" if goal["passed"] else "FAIL"] for goal in document["goals"]
    ]
    return "\n\n".join(
        [
            f"**Training input vs a training step (batch {batch}, whisper-base + LoRA r 32, "
            f"{cpu['flops'] / 1e12:.2f} TFLOP per step; compact features "
            f"{padding['compact_feature_bytes_per_batch'] / 1e6:.2f} MB per batch, padded fp32 input "
            f"{padding['padded_fp32_bytes_per_batch'] / 1e6:.2f} MB)**",
            markdown_table(["", "examples per second", "per batch"], loader + steps),
            markdown_table(waited_header, [*waited, padding_row]),
            ESTIMATE_NOTE + " Sources: " + "; ".join(SOURCES.values()) + ".",
            "**Goals**",
            markdown_table(["goal", "measured", "result"], goals),
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_input", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--recordings", type=int, default=24, help="recordings in the small cache")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps after one warm-up step")
    parser.add_argument("--loader-batches", type=int, default=60, help="batches timed per loader setting")
    parser.add_argument("--wait-batches", type=int, default=400, help="steps timed per setting and GPU step")
    parser.add_argument("--model", default="model", help="whisper-base directory (built if missing)")
    parser.add_argument("--workdir", default="benchmarks/work", help="shared with benchmarks/prepare.py")
    parser.add_argument("--output", default="benchmarks/results/train_input.json")
    args = parser.parse_args(argv)
    document = run_benchmark(args)
    publish(document, Path(args.output))
    return 0 if all(goal["passed"] for goal in document["goals"]) else 1


if __name__ == "__main__":
    sys.exit(main())
