"""Training input benchmark: the cache -> padded batches path, against one training step.

    python -m benchmarks.train_input [--recordings 24] [--batch-size 8] [--steps 3]

On a small cache of benchmarks/prepare.py's corpus: the loader's examples per second (with no loader
workers and with some), the padding to the model's input (`model_inputs`), a whisper-base + LoRA training
step on this CPU (time and FLOPs), and how long the training loop waits for its batches when a step takes as
long as an H100's or an H100 MIG 1g.10gb slice's would (estimated: ESTIMATE_NOTE), for four ways batches
can reach the loop. benchmarks/README.md says what each figure means.
"""

from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from itertools import product
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.flop_counter import FlopCounterMode
from transformers import WhisperTokenizerFast, set_seed

from benchmarks.prepare import CORES, LANGUAGE, SEED, build_corpus, publish, serve_corpus, write_export
from benchmarks.readme import goals_table, table
from whisper_pipeline.cache import open_cache
from whisper_pipeline.constants import N_FRAMES
from whisper_pipeline.demo.pretrained import ensure_pretrained
from whisper_pipeline.prepare.run import PrepareArguments, run_prepare
from whisper_pipeline.train import arguments as train_arguments
from whisper_pipeline.train import run as training
from whisper_pipeline.train.batches import BackgroundBatches, CacheRows, model_inputs
from whisper_pipeline.train.modeling import TORCH_DTYPES
from whisper_pipeline.train.trainer import BACKGROUND_STEPS, DecoderTokens, WhisperDataCollator

# NVIDIA H100 datasheet, H100 SXM: BF16 Tensor Core 1,979 TFLOPS with sparsity, half of it dense; 3.35 TB/s.
H100_BF16_DENSE_FLOPS, H100_MEMORY_BYTES_PER_S = 989.4e12, 3.35e12
# NVIDIA MIG User Guide, H100 80GB: a 1g.10gb slice has 1 of 7 compute slices and 1 of 8 memory slices.
MIG_1G_SHARE, MIG_1G_MEMORY_SHARE = 1 / 7, 1 / 8
# PaLM (Chowdhery et al. 2022, arXiv:2204.02311, Table 3): 46.2% model FLOPs utilisation, the best documented.
BEST_DOCUMENTED_MFU = 0.462
# model_inputs on a GPU: the cast and the where read and write the compact frames, the cat reads them and
# writes the padded input: at most 6 passes over the padded bf16 input's bytes.
PADDING_PASSES, BF16_BYTES = 6, 2
ESTIMATE_NOTE = (
    "GPU steps are estimates, not measurements: the measured FLOPs of the step / (H100 BF16 dense peak "
    "989.4 TFLOPS; 1/7 of it for a MIG 1g.10gb slice) at 46.2% MFU, the best documented; real steps of so "
    "small a model are longer, so these are lower bounds. Device padding on them: 6 passes over the padded "
    "bf16 input at the H100 SXM's 3.35 TB/s (1/8 of it on a MIG 1g.10gb slice), kernel launches not counted. "
    "Sources: NVIDIA H100 datasheet; NVIDIA MIG User Guide, H100 80GB profiles; PaLM, Chowdhery et al. "
    "2022 (arXiv:2204.02311), Table 3."
)
GPUS = {"h100": "H100", "mig_1g": "MIG 1g.10gb"}
GOAL_INPUT_SHARE = 0.02
LOADER_WORKERS = 4  # loader processes compared with the Trainer's default (none), at most one per core
PREFETCH_FACTOR = 2  # torch DataLoader's default: batches in flight per worker
WARMUP_BATCHES = 3
TRAINER_SETTING = "0+background"  # PipelineTrainingArguments' default: WhisperTrainer's background thread
Load = Callable[[int, int], DataLoader]  # (loader workers, batches) -> a loader of random training batches


def loader_settings(workers: int) -> dict[str, tuple[int, str, str]]:
    """How batches can reach the training loop: loader processes, the thread that takes them, description."""
    received = f"{workers} worker processes, received by"
    return {
        "0": (0, "", "no workers, made in the loop (the Trainer without the thread)"),
        TRAINER_SETTING: (0, "background", "no workers, made ahead by a background thread"),
        str(workers): (workers, "", f"{received} the loop"),
        f"{workers}+handover": (workers, "handover", f"{received} a pin-memory-like thread"),
    }


def build_cache(workdir: Path, model: Path, recordings: int) -> Path:
    """A cache of the first `recordings` of the benchmark corpus (reused while it is current)."""
    corpus = build_corpus(workdir / "corpus", recordings)
    export = write_export(corpus, workdir / f"train_input_export_{recordings}.json")
    output = workdir / "train_input_cache"
    with serve_corpus(workdir / "corpus", corpus, workdir / "s3") as endpoints:
        args = PrepareArguments(str(export), str(output), str(model), language=LANGUAGE, seed=SEED)
        run_prepare(args, environ=endpoints["loopback"])
    return output


def _loader(rows: CacheRows, collate: WhisperDataCollator, batch: int, workers: int, n: int) -> DataLoader:
    """Random batches with replacement, so that a small cache feeds any number of batches."""
    sampler = RandomSampler(rows, replacement=True, num_samples=batch * n)
    options = {"num_workers": workers, "collate_fn": collate, "persistent_workers": workers > 0}
    return DataLoader(rows, batch, sampler=sampler, **options)


def loader_throughput(load: Load, workers: int, batches: int) -> tuple[float, list[dict]]:
    """Batches per second, free-running after WARMUP_BATCHES (worker start-up excluded), and all batches."""
    iterator = iter(load(workers, batches + WARMUP_BATCHES))
    warm = [next(iterator) for _ in range(WARMUP_BATCHES)]
    started = time.perf_counter()
    loaded = list(iterator)
    return batches / (time.perf_counter() - started), warm + loaded


def cpu_padding(loaded: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """Mean seconds of `model_inputs` per batch on this CPU (fp32, the model's dtype here) after a warm-up,
    and the mean bytes of the compact features the loader hands over, against those of the padded input."""
    for batch in loaded[:WARMUP_BATCHES]:
        model_inputs(batch, dtype=torch.float32, device="cpu")
    timed = loaded[WARMUP_BATCHES:]
    started = time.perf_counter()
    for batch in timed:
        padded = model_inputs(batch, dtype=torch.float32, device="cpu")["input_features"]
    padding = {"seconds_per_batch": round((time.perf_counter() - started) / len(timed), 6)}
    compact = sum(batch["input_features"].nbytes for batch in timed) / len(timed)
    padding["compact_feature_bytes_per_batch"] = round(compact)
    return {**padding, "padded_fp32_bytes_per_batch": padded.nbytes}


def _handed_over(batches: Iterator[dict], depth: int) -> Iterator[dict]:
    """`batches` received by a thread and handed over through a queue, as torch's pin-memory thread receives
    them from the workers with CUDA (without an accelerator torch runs no such thread: emulated here,
    without the page-locked copy)."""
    handover: queue.Queue = queue.Queue(maxsize=depth)
    end = object()

    def receive() -> None:
        for batch in batches:
            handover.put(batch)
        handover.put(end)

    threading.Thread(target=receive, name="handover", daemon=True).start()
    while (batch := handover.get()) is not end:
        yield batch


def waited_per_step(load: Load, setting: tuple[int, str, str], batches: int, step_s: float) -> list[float]:
    """Mean seconds the training loop waits in next() when each step takes `step_s` (slept: the CPU is free
    for the loader meanwhile, as while a GPU computes), and the CPU seconds per batch of the thread that
    takes the batches from the loader (the loop's own when no thread does)."""
    workers, thread, _ = setting
    loader, taker_cpu = iter(load(workers, batches + WARMUP_BATCHES)), [0.0]

    def taken() -> Iterator[dict]:
        while True:
            started = time.thread_time()
            item = next(loader, None)
            taker_cpu[0] += time.thread_time() - started
            if item is None:
                return
            yield item

    iterator = taken()
    if thread == "background":  # what WhisperTrainer does without loader workers
        iterator = BackgroundBatches(iterator, BACKGROUND_STEPS)
    elif thread == "handover":
        iterator = _handed_over(iterator, PREFETCH_FACTOR * workers)
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    waited = 0.0
    for _ in range(batches):
        started = time.perf_counter()
        next(iterator)
        waited += time.perf_counter() - started
        time.sleep(step_s)
    for _ in iterator:  # to the end: the taking thread's CPU time is then complete
        pass
    return [round(waited / batches, 6), round(taker_cpu[0] / (batches + WARMUP_BATCHES), 6)]


def training_model(model_dir: Path, precision: str = "fp32", adapter: str | None = None) -> PeftModel:
    """whisper-base + LoRA as train_model.py builds it (its default LoRA: r 32, alpha 64 on q/k/v/out, as the
    demo's), a new adapter or `adapter` continued, in training mode; seeded first as train_model.py does,
    so that new adapters start alike."""
    arguments = (
        train_arguments.DataArguments(),
        train_arguments.ModelArguments(model=str(model_dir), adapter=adapter),
        train_arguments.LoraArguments(),
    )
    set_seed(SEED)
    model = training.build_model(*arguments, language=LANGUAGE, task="transcribe", precision=precision)
    return model.train()


def forward_backward(model: PeftModel, batch: Mapping[str, torch.Tensor], precision: str = "fp32") -> float:
    """One forward and backward as WhisperTrainer runs them on this CPU: the input padded in the compute
    dtype, the forward under bf16 autocast for bf16 (accelerate's, with --bf16 --use-cpu); the loss."""
    inputs = model_inputs(batch, dtype=TORCH_DTYPES[precision], device="cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(**inputs).loss
    loss.backward()
    return loss.item()


def training_step(model_dir: Path, batches: Iterator[dict[str, torch.Tensor]], steps: int) -> dict[str, Any]:
    """whisper-base + a new LoRA adapter as train_model.py builds it, fp32 on this CPU: the FLOPs of one step
    (the warm-up) and the mean seconds of `steps` more."""
    model = training_model(model_dir)
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=train_arguments.DEFAULT_LEARNING_RATE)

    def step() -> None:
        forward_backward(model, next(batches))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    cpu_step = {"flops": float(counter.get_total_flops()), "seconds": (time.perf_counter() - started) / steps}
    cpu_step["trainable_parameters"], cpu_step["total_parameters"] = model.get_nb_trainable_parameters()
    return {**cpu_step, "torch_threads": torch.get_num_threads()}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    workdir, model = Path(args.workdir).resolve(), Path(args.model).resolve()
    ensure_pretrained(model)
    cache = open_cache(build_cache(workdir, model, args.recordings), model_dir=model)
    train = CacheRows(cache.train)  # as train.py's _splits gives it
    collator = WhisperDataCollator(  # as train_model.py makes it, with its defaults
        DecoderTokens.from_tokenizer(WhisperTokenizerFast.from_pretrained(model)),
        timestamp_probability=train_arguments.DEFAULT_TIMESTAMP_PROBABILITY,
        prompt_probability=train_arguments.DEFAULT_PROMPT_PROBABILITY,
    )
    batch, workers = args.batch_size, min(LOADER_WORKERS, CORES)
    load = partial(_loader, train, collator, batch)
    print(f"loader throughput on {len(train)} training rows ...", flush=True)
    (alone, loaded), (shared, _) = (loader_throughput(load, n, args.loader_batches) for n in (0, workers))
    throughput = {"0": batch * alone, str(workers): batch * shared}
    padding = cpu_padding(loaded)
    print("training step ...", flush=True)
    cpu_step = training_step(model, iter(load(0, args.steps + 1)), args.steps)
    h100_step = cpu_step["flops"] / (H100_BF16_DENSE_FLOPS * BEST_DOCUMENTED_MFU)
    steps = {"h100": h100_step, "mig_1g": h100_step / MIG_1G_SHARE}
    traffic = PADDING_PASSES * BF16_BYTES * batch * train[0].frames.shape[1] * N_FRAMES
    device_padding = {"h100": traffic / H100_MEMORY_BYTES_PER_S}
    device_padding["mig_1g"] = device_padding["h100"] / MIG_1G_MEMORY_SHARE
    print("waiting time per step at the estimated GPU step times ...", flush=True)
    settings, waits = loader_settings(workers), {}
    for gpu, (label, setting) in product(GPUS, settings.items()):
        waits.setdefault(gpu, {})[label] = waited_per_step(load, setting, args.wait_batches, steps[gpu])
    # On this CPU the Trainer loads in the training process and pads there too: counted as if in the loop.
    input_s = {"cpu": batch / throughput["0"] + padding["seconds_per_batch"]}
    input_s.update({gpu: waits[gpu][TRAINER_SETTING][0] + device_padding[gpu] for gpu in GPUS})
    shares = {"cpu": input_s["cpu"] / cpu_step["seconds"], **{gpu: input_s[gpu] / steps[gpu] for gpu in GPUS}}
    shown = {"cpu": f"{1000 * input_s['cpu']:.1f} ms of {cpu_step['seconds']:.2f} s"}
    shown.update({gpu: f"{1000 * input_s[gpu]:.3f} ms of {1000 * steps[gpu]:.1f} ms" for gpu in GPUS})
    default = "the Trainer's default: no loader workers, batches made by a background thread; device padding"
    on = {gpu: f"{name} (estimated; {default})" for gpu, name in GPUS.items()}
    on["cpu"] = "this CPU (measured; 0 workers, padding)"
    asks = {key: f"input < {GOAL_INPUT_SHARE:.0%} of a step: {where}" for key, where in on.items()}
    goals = [
        {"goal": asks[key], "measured": f"{share:.2%} ({shown[key]})", "passed": share < GOAL_INPUT_SHARE}
        for key, share in shares.items()
    ]
    estimates = {"note": ESTIMATE_NOTE, **{f"{gpu}_step_seconds": round(steps[gpu], 6) for gpu in GPUS}}
    estimates.update({f"{gpu}_device_padding_seconds": round(device_padding[gpu], 7) for gpu in GPUS})
    document = {
        "machine": {"cores": CORES, "load_average_at_end": os.getloadavg()},
        "cache": {"rows": len(train), "recordings": args.recordings, "fingerprint": cache.fingerprint},
        "batch_size": batch,
        "loader_examples_per_second": {label: round(value, 1) for label, value in throughput.items()},
        "cpu_padding": padding,
        "cpu_step": {key: round(value, 4) for key, value in cpu_step.items()},
        "estimates": estimates,
        "settings": {label: setting[2] for label, setting in settings.items()},
        "waits": waits,  # GPU -> setting -> [seconds waited per step, CPU s per batch of the taking thread]
        "input_share_of_step": {name: round(value, 5) for name, value in shares.items()},
        "goals": goals,
    }
    document["markdown"] = markdown(document)
    document["wall_seconds"] = round(time.perf_counter() - started, 1)
    return document


def markdown(document: Mapping[str, Any]) -> str:
    """The tables the README shows: input path and steps, waits per step, goals."""
    batch, estimates, cpu = document["batch_size"], document["estimates"], document["cpu_step"]
    padding, throughput = document["cpu_padding"], document["loader_examples_per_second"]
    pad_s = padding["seconds_per_batch"]

    def rate(label: str, seconds: float, digits: int = 2) -> list[str]:
        """Examples per second, and seconds per batch."""
        per_batch = f"{seconds:.2f} s" if seconds >= 1 else f"{1000 * seconds:.{digits}f} ms"
        return [label, f"{batch / seconds:.0f}" if seconds < 1 else f"{batch / seconds:.2f}", per_batch]

    rows = [rate(f"loader, {count} workers", batch / per_second) for count, per_second in throughput.items()]
    rows += [rate(f"padding to [{batch}, 80, 3000] fp32 on this CPU (on a GPU: on the device)", pad_s)]
    rows += [rate("input path on this CPU: loader (0 workers) + padding", batch / throughput["0"] + pad_s)]
    rows += [rate("training step, this CPU (measured, fp32)", cpu["seconds"])]
    for gpu, name in GPUS.items():
        rows += [rate(f"training step, {name} (estimate, lower bound)", estimates[f"{gpu}_step_seconds"], 1)]
    columns = ("waited per step", "CPU per batch of the taking thread")
    header = ["batches reach the loop", *(f"{what}, {gpu} step" for gpu in GPUS.values() for what in columns)]
    waited = [
        [description + (" (the Trainer's default)" if label == TRAINER_SETTING else "")]
        + [f"{1000 * figure:.3f} ms" for gpu in GPUS for figure in document["waits"][gpu][label]]
        for label, description in document["settings"].items()
    ]
    padded = [f"{1000 * estimates[f'{gpu}_device_padding_seconds']:.4f} ms" for gpu in GPUS]
    waited.append(["device padding per step (estimate)", padded[0], "", padded[1], ""])
    title = f"**Training input vs a training step (batch {batch}, whisper-base + LoRA r 32, "
    title += f"{cpu['flops'] / 1e12:.2f} TFLOP per step; compact features "
    title += f"{padding['compact_feature_bytes_per_batch'] / 1e6:.2f} MB per batch, padded fp32 input "
    title += f"{padding['padded_fp32_bytes_per_batch'] / 1e6:.2f} MB)**"
    tables = [title, table(["", "examples per second", "per batch"], rows), table(header, waited)]
    return "\n\n".join([*tables, ESTIMATE_NOTE, "**Goals**", goals_table(document["goals"])])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m benchmarks.train_input", description=__doc__.split("\n")[0])
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
