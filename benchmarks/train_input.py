"""Training input benchmark: the cache -> padded batches path, against one training step.

    python -m benchmarks.train_input [--recordings 24] [--batch-size 8] [--steps 3]

Builds (or reuses) a small feature cache from the synthetic corpus of benchmarks/prepare.py, then measures
on this machine:

1. the input path alone, as the Trainer runs it: open_cache, the numpy-formatted training split,
   WhisperDataCollator and a torch DataLoader, in examples per second with 0 loader workers (one core, the
   Trainer's default without CUDA) and with min(4, cores) workers (its default with CUDA);
2. one training step of whisper-base with a LoRA adapter (r 32 on the default targets, batch 8, fp32 on
   this CPU, AdamW), timed over a few steps after a warm-up, and its FLOPs (torch's FlopCounterMode);
3. the input time the training loop actually waits for per step when a step takes as long as an H100's or
   an H100 MIG 1g.10gb slice's would: a loop that sleeps one estimated step between batches and times
   each `next()`.

The GPU step times are ESTIMATES, not measurements: the measured FLOPs of the step divided by a documented
peak (see H100_BF16_DENSE_FLOPS) at the best documented utilisation (MFU). A 74 M-parameter model reaches
far less than that, so the estimated steps are lower bounds and the input share they give an upper bound.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
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
from whisper_pipeline.cache import open_cache
from whisper_pipeline.modeling import (
    configure_spec_augment,
    load_base_model,
    new_adapter,
    prepare_for_training,
)
from whisper_pipeline.prepare import PrepareArguments, run_prepare
from whisper_pipeline.pretrained import ensure_pretrained
from whisper_pipeline.train import (
    DEFAULT_LEARNING_RATE,
    MODEL_COLUMNS,
    DataArguments,
    LoraArguments,
    WhisperDataCollator,
)

# NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100): H100 SXM BF16 Tensor Core
# 1,979 TFLOPS "with sparsity", half of it dense: 989.4 TFLOPS.
H100_BF16_DENSE_FLOPS = 989.4e12
# NVIDIA Multi-Instance GPU User Guide, H100 80GB profiles: 1g.10gb is one of 7 compute slices.
MIG_1G_SHARE = 1 / 7
# PaLM (Chowdhery et al. 2022, arXiv:2204.02311, Table 3): 46.2% model FLOPs utilisation, the best
# documented figure for training at scale; whisper-base (74 M parameters, batch 8) gets far less.
BEST_DOCUMENTED_MFU = 0.462
SOURCES = {
    "h100_bf16_dense_flops": "NVIDIA H100 datasheet: 1,979 TFLOPS BF16 with sparsity, 989.4 dense",
    "mig_1g_share": "NVIDIA MIG User Guide, H100 80GB: 1g.10gb is 1 of 7 compute slices",
    "mfu": "PaLM, Chowdhery et al. 2022 (arXiv:2204.02311), Table 3: 46.2% MFU",
}
ESTIMATE_NOTE = (
    "GPU steps are estimates, not measurements: the measured FLOPs of the step / (H100 BF16 dense peak "
    "989.4 TFLOPS; 1/7 of it for a MIG 1g.10gb slice) at 46.2% MFU, the best documented; real steps of so "
    "small a model are longer, so these are lower bounds."
)
GOAL_INPUT_SHARE = 0.02
TRAINER_CUDA_WORKERS = 4  # PipelineTrainingArguments' default dataloader_num_workers with CUDA
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
    dataset, collator: WhisperDataCollator, batch_size: int, workers: int, batches: int
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
    dataset, collator: WhisperDataCollator, batch_size: int, workers: int, batches: int
) -> float:
    """Examples per second, free-running, after WARMUP_BATCHES (worker start-up excluded)."""
    iterator = iter(_loader(dataset, collator, batch_size, workers, batches + WARMUP_BATCHES))
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    started = time.perf_counter()
    for _ in iterator:
        pass
    return batch_size * batches / (time.perf_counter() - started)


def waited_per_step(
    dataset, collator: WhisperDataCollator, batch_size: int, workers: int, batches: int, step_s: float
) -> float:
    """Mean seconds the training loop waits in next() when each step takes `step_s` (slept: the CPU is free
    for the loader meanwhile, as it is while a GPU computes)."""
    iterator = iter(_loader(dataset, collator, batch_size, workers, batches + WARMUP_BATCHES))
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    waited = 0.0
    for _ in range(batches):
        started = time.perf_counter()
        next(iterator)
        waited += time.perf_counter() - started
        time.sleep(step_s)
    return waited / batches


def training_step(
    model_dir: Path, batches: Iterator[Mapping[str, torch.Tensor]], steps: int
) -> dict[str, float]:
    """whisper-base + a new LoRA adapter as train_model.py builds it, fp32 on CPU: FLOPs of one step (the
    warm-up) and the mean time of `steps` more."""
    lora, data = LoraArguments(), DataArguments()
    model = load_base_model(model_dir, precision="fp32")
    configure_spec_augment(
        model,
        enabled=data.spec_augment,
        mask_time_prob=data.mask_time_prob,
        mask_feature_prob=data.mask_feature_prob,
    )
    prepare_for_training(model, gradient_checkpointing=False)
    model = new_adapter(
        model,
        r=lora.lora_r,
        alpha=lora.lora_alpha,
        dropout=lora.lora_dropout,
        target_modules=lora.lora_target_modules,
        unfreeze_conv=False,
    )
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=DEFAULT_LEARNING_RATE
    )

    def step() -> None:
        batch = next(batches)
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
    train = cache.train.with_format("numpy", columns=MODEL_COLUMNS)  # as train.py's _splits gives it
    collator = WhisperDataCollator(WhisperConfig.from_pretrained(model).decoder_start_token_id)
    workers = min(TRAINER_CUDA_WORKERS, CORES)
    batch = args.batch_size

    print(f"loader throughput on {len(train)} training rows ...", flush=True)
    throughput = {
        count: loader_throughput(train, collator, batch, count, args.loader_batches) for count in (0, workers)
    }
    print("training step ...", flush=True)
    step_batches = iter(_loader(train, collator, batch, 0, args.steps + 1))
    cpu_step = training_step(model, step_batches, args.steps)
    h100_step = cpu_step["flops"] / (H100_BF16_DENSE_FLOPS * BEST_DOCUMENTED_MFU)
    mig_step = h100_step / MIG_1G_SHARE
    print("waiting time per step at the estimated GPU step times ...", flush=True)
    waits = {
        name: waited_per_step(train, collator, batch, workers, args.loader_batches, step_s)
        for name, step_s in (("h100", h100_step), ("mig_1g", mig_step))
    }
    input_cpu = batch / throughput[0]  # on CPU the Trainer loads in the training process (0 workers)
    shares = {
        "cpu": input_cpu / cpu_step["seconds"],
        "h100": waits["h100"] / h100_step,
        "mig_1g": waits["mig_1g"] / mig_step,
    }
    goals = [
        {
            "goal": f"input < {GOAL_INPUT_SHARE:.0%} of a step: this CPU (measured; 0 loader workers)",
            "measured": f"{shares['cpu']:.2%} ({1000 * input_cpu:.1f} ms of {cpu_step['seconds']:.2f} s)",
            "passed": shares["cpu"] < GOAL_INPUT_SHARE,
        },
        {
            "goal": f"input < {GOAL_INPUT_SHARE:.0%} of a step: H100 (estimated; {workers} loader workers)",
            "measured": f"{shares['h100']:.2%} ({1000 * waits['h100']:.2f} ms of {1000 * h100_step:.1f} ms)",
            "passed": shares["h100"] < GOAL_INPUT_SHARE,
        },
        {
            "goal": f"input < {GOAL_INPUT_SHARE:.0%} of a step: MIG 1g.10gb (estimated; {workers} workers)",
            "measured": f"{shares['mig_1g']:.2%} ({1000 * waits['mig_1g']:.2f} of {1000 * mig_step:.1f} ms)",
            "passed": shares["mig_1g"] < GOAL_INPUT_SHARE,
        },
    ]
    document = {
        "machine": {"cores": CORES, "load_average_at_end": os.getloadavg()},
        "cache": {"rows": len(train), "recordings": args.recordings, "fingerprint": cache.fingerprint},
        "batch_size": batch,
        "loader_examples_per_second": {str(count): round(value, 1) for count, value in throughput.items()},
        "cpu_step": {
            key: round(value, 4) if isinstance(value, float) else value for key, value in cpu_step.items()
        },
        "estimates": {
            "note": ESTIMATE_NOTE,
            "sources": SOURCES,
            "h100_step_seconds": round(h100_step, 6),
            "mig_1g_step_seconds": round(mig_step, 6),
        },
        "waited_per_step_seconds": {name: round(value, 6) for name, value in waits.items()},
        "input_share_of_step": {name: round(value, 5) for name, value in shares.items()},
        "goals": goals,
    }
    document["markdown"] = markdown(document, workers)
    document["wall_seconds"] = round(time.perf_counter() - started, 1)
    return document


def markdown(document: Mapping[str, Any], workers: int) -> str:
    throughput, batch = document["loader_examples_per_second"], document["batch_size"]
    estimates, waits = document["estimates"], document["waited_per_step_seconds"]
    cpu = document["cpu_step"]
    loader = [
        [f"input path, {count} loader workers", f"{value:.0f}", f"{1000 * batch / value:.1f} ms"]
        for count, value in throughput.items()
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
    waited = [
        [f"waited in next() per step at the H100 step ({workers} workers)", f"{1000 * waits['h100']:.3f} ms"],
        [
            f"waited in next() per step at the MIG 1g.10gb step ({workers} workers)",
            f"{1000 * waits['mig_1g']:.3f} ms",
        ],
    ]
    goals = [
        [goal["goal"], goal["measured"], "PASS" if goal["passed"] else "FAIL"] for goal in document["goals"]
    ]
    return "\n\n".join(
        [
            f"**Training input vs a training step (batch {batch}, whisper-base + LoRA r 32, "
            f"{cpu['flops'] / 1e12:.2f} TFLOP per step)**",
            markdown_table(["", "examples per second", "per batch"], loader + steps),
            markdown_table(["", "time"], waited),
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
    parser.add_argument("--model", default="model", help="whisper-base directory (built if missing)")
    parser.add_argument("--workdir", default="benchmarks/work", help="shared with benchmarks/prepare.py")
    parser.add_argument("--output", default="benchmarks/results/train_input.json")
    args = parser.parse_args(argv)
    document = run_benchmark(args)
    publish(document, Path(args.output))
    return 0 if all(goal["passed"] for goal in document["goals"]) else 1


if __name__ == "__main__":
    sys.exit(main())
