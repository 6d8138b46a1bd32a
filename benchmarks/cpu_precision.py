"""CPU precision benchmark: a whisper-base + LoRA training step and the demo's held-out WER, fp32 against bf16
autocast, in one run.

    python -m benchmarks.cpu_precision [--demo-data demo_data] [--batch-size 4] [--steps 5]

What `--precision auto` takes for training on a CPU (train/modeling.py: bf16 autocast only where the CPU
multiplies bf16 natively, AMX or AVX512-BF16) rests on two figures measured here side by side: the time of a
forward and backward in each precision, and whether the held-out WER holds under bf16. A short fine-tune in
each precision would take far too long on a few cores, so the WER is that of the adapter `make demo` trained
(fp32), generating under each precision on the demo's held-out utterances: what the evaluations of a bf16
training run (and its choice of checkpoint) see. benchmarks/README.md says what each figure means.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import WhisperTokenizerFast, set_seed

from benchmarks.prepare import CORES, publish
from benchmarks.readme import goals_table, table
from benchmarks.train_input import build_cache, forward_backward, training_model
from whisper_pipeline.demo.pretrained import ensure_pretrained
from whisper_pipeline.demo.run import DemoArguments
from whisper_pipeline.inference.evaluate import (
    EvaluateArguments,
    Utterances,
    load_utterances,
    transcribe_features,
)
from whisper_pipeline.train.metrics import score
from whisper_pipeline.train.modeling import native_bf16, training_precision
from whisper_pipeline.train.outputs import ADAPTER_DIR
from whisper_pipeline.train.trainer import DecoderTokens, WhisperDataCollator

PRECISIONS = ("fp32", "bf16")
# Where `make demo` leaves its adapter and the prepared held-out export (whisper_pipeline/demo/run.py).
DEMO_ADAPTER, DEMO_HELDOUT = Path("outputs") / ADAPTER_DIR, Path("outputs") / "evaluation"
# CPU features that decide bf16 speed: torch's names (torch.cpu.get_capabilities) and /proc/cpuinfo's.
FEATURES = {key: key for key in ("amx_bf16", "amx_tile", "avx512_bf16", "avx2")} | {"avx512_f": "avx512f"}
GOAL_WER_POINTS = 1.0  # bf16's held-out WER at most this many points above fp32's
EVAL_BATCH = 8  # the demo's evaluation batch (evaluate.py's default)
# Held-out utterances scored by default without native bf16: on 2 shared AVX2 cores a bf16 encoder forward
# took 3 to 4 times fp32's, and the demo's 72 utterances would take most of an hour in bf16 alone.
EMULATED_UTTERANCES = 16


def cpu_facts() -> dict[str, Any]:
    """What this CPU offers, as torch sees it (its kernel level and cpuinfo) and as /proc/cpuinfo lists it,
    and what --precision auto makes of it for training."""
    capabilities = torch.cpu.get_capabilities()
    try:
        listed = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        )
        flags: set[str] | None = set(listed.split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = None
    return {
        "name": capabilities.get("cpu_name"),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_features": {key: bool(capabilities.get(key)) for key in FEATURES},
        "proc_cpuinfo_flags": None if flags is None else {name: name in flags for name in FEATURES.values()},
        "native_bf16": native_bf16(capabilities),
        "auto": training_precision("auto", cuda=False),
        "torch_threads": torch.get_num_threads(),
    }


def heldout(demo_data: Path, model: Path) -> Utterances | None:
    """The demo's held-out utterances, as its evaluation prepared them; None before `make demo` has run."""
    cache = demo_data / DEMO_HELDOUT / "cache"
    if not (cache / "validation").is_dir() or not (demo_data / DEMO_ADAPTER).is_dir():
        return None
    return load_utterances(EvaluateArguments(model=str(model), data_dir=str(cache)))


def time_steps(
    models: Mapping[str, Any], batch: Mapping[str, torch.Tensor], steps: int, budget_s: float
) -> dict[str, Any]:
    """Seconds of one forward and backward per precision after a warm-up step each, alternating precisions
    step by step (the machine's speed drifts: each gets the same share of it); a precision stops early once
    its timed steps have taken `budget_s` (emulated bf16 takes minutes a step). The warm-up step's loss and
    LoRA gradient in each precision, its dropout and SpecAugment draws seeded alike."""
    seconds: dict[str, list[float]] = {precision: [] for precision in models}
    warmup, losses, gradients = {}, {}, {}
    for step in range(steps + 1):
        for precision, model in models.items():
            if sum(seconds[precision]) >= budget_s:
                continue
            set_seed(step)  # torch's draws (dropout) and numpy's (SpecAugment's masks)
            started = time.perf_counter()
            loss = forward_backward(model, batch, precision)
            elapsed = round(time.perf_counter() - started, 3)
            if step:
                seconds[precision].append(elapsed)
            else:
                warmup[precision], losses[precision] = elapsed, loss
                trained = [p.grad.flatten() for p in model.parameters() if p.requires_grad]
                gradients[precision] = torch.cat(trained)
            model.zero_grad(set_to_none=True)
            print(f"  step {step} {precision}: {elapsed:.2f} s{'' if step else ' (warm-up)'}", flush=True)
    cosine = torch.nn.functional.cosine_similarity(gradients["fp32"], gradients["bf16"], dim=0).item()
    return {"seconds": seconds, "warmup_seconds": warmup, "loss": losses, "gradient_cosine": round(cosine, 5)}


def heldout_scores(models: Mapping[str, Any], utterances: Utterances, model_dir: Path) -> dict[str, Any]:
    """Greedy transcripts of the held-out utterances in each precision (inputs in the weights' dtype, under
    bf16 autocast for bf16, as the Trainer's evaluation runs), scored, how long each took, and how many bf16
    transcripts are word for word fp32's."""
    tokenizer = WhisperTokenizerFast.from_pretrained(str(model_dir))
    scores, transcripts = {}, {}
    for precision, model in models.items():
        model.eval()
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            transcripts[precision] = transcribe_features(
                model,
                utterances,
                batch_size=EVAL_BATCH,
                max_new_tokens=DemoArguments.eval_max_new_tokens,
                tokenizer=tokenizer,
                label=precision,
            )
        seconds = time.perf_counter() - started
        scores[precision] = {
            **score(utterances.references, transcripts[precision]),
            "seconds": round(seconds, 1),
        }
    same = sum(a == b for a, b in zip(transcripts["fp32"], transcripts["bf16"], strict=True))
    return {**scores, "identical_transcripts": same, "transcripts": transcripts}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    started, load_at_start = time.perf_counter(), os.getloadavg()
    model_dir, demo_data = Path(args.model).resolve(), Path(args.demo_data).resolve()
    ensure_pretrained(model_dir)
    cpu = cpu_facts()
    print(f"CPU: {cpu['name']}, torch {cpu['torch_cpu_capability']}; --precision auto: {cpu['auto'][1]}")
    utterances = heldout(demo_data, model_dir)
    adapter = str(demo_data / DEMO_ADAPTER) if utterances else None
    models = {precision: training_model(model_dir, precision, adapter) for precision in PRECISIONS}
    scores = None
    if utterances is None:  # no demo run: step times on the benchmark corpus, no WER
        print(f"no demo outputs in {demo_data} (make demo): held-out WER not measured", flush=True)
        cache = build_cache(Path(args.workdir).resolve(), model_dir, args.recordings)
        utterances = load_utterances(
            EvaluateArguments(model=str(model_dir), data_dir=str(cache), split="train")
        )
    else:
        default = len(utterances.references) if cpu["native_bf16"] else EMULATED_UTTERANCES
        count = min(args.utterances or default, len(utterances.references))
        # transcribe_features takes as many utterances as there are references: the first `count`
        subset = dataclasses.replace(utterances, references=utterances.references[:count])
        print(
            f"held-out WER: {count} of {len(utterances.references)} utterances, each precision ...",
            flush=True,
        )
        scores = {
            "utterances": count,
            "of": len(utterances.references),
            **heldout_scores(models, subset, model_dir),
            **(_demo_evaluation(demo_data) if count == len(utterances.references) else {}),
        }
    tokens = DecoderTokens.from_tokenizer(WhisperTokenizerFast.from_pretrained(model_dir))
    batch = WhisperDataCollator(tokens)(utterances.features.take(range(args.batch_size)))
    print(
        f"forward + backward, batch {args.batch_size}: a warm-up and {args.steps} steps each ...", flush=True
    )
    for model in models.values():
        model.train()
    steps = time_steps(models, batch, args.steps, args.budget_s)
    median = {precision: statistics.median(steps["seconds"][precision]) for precision in PRECISIONS}
    document = {
        "machine": {
            "cores": CORES,
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
        },
        "cpu": cpu,
        "model": {
            "adapter": adapter,
            "trainable_parameters": models["fp32"].get_nb_trainable_parameters()[0],
        },
        "batch_size": args.batch_size,
        "steps": {
            **steps,
            "median_seconds": median,
            "bf16_over_fp32": round(median["bf16"] / median["fp32"], 3),
        },
        "heldout": scores,
    }
    document["goals"] = goals(document)
    document["markdown"] = markdown(document)
    document["wall_seconds"] = round(time.perf_counter() - started, 1)
    return document


def _demo_evaluation(demo_data: Path) -> dict[str, Any]:
    """The WER `make demo` printed for its adapter (merged, fp32): the same utterances, for comparison."""
    try:
        results = json.loads((demo_data / DEMO_HELDOUT / "evaluation.json").read_text(encoding="utf-8"))
        return {"demo_evaluate_wer": results["scores"]["adapter"]["wer"]}
    except (OSError, KeyError, ValueError):
        return {}


def goals(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """bf16 keeps the held-out WER; --precision auto takes the faster precision on this CPU."""
    median, heldout = document["steps"]["median_seconds"], document["heldout"]
    auto, faster = document["cpu"]["auto"][0], min(PRECISIONS, key=median.__getitem__)
    wer_goal = f"held-out WER under bf16 autocast at most {GOAL_WER_POINTS:g} point above fp32's"
    wer = {"goal": wer_goal, "measured": "not measured: no demo outputs (make demo)", "passed": None}
    if heldout:
        points = 100 * (heldout["bf16"]["wer"] - heldout["fp32"]["wer"])
        shown = f"{100 * heldout['bf16']['wer']:.1f}% vs {100 * heldout['fp32']['wer']:.1f}%"
        wer.update(measured=f"{points:+.1f} points ({shown})", passed=points <= GOAL_WER_POINTS)
    ratio = document["steps"]["bf16_over_fp32"]
    return [
        wer,
        {
            "goal": "--precision auto takes the faster precision for training on this CPU",
            "measured": f"auto: {auto}; faster: {faster} (bf16 step {ratio:.2f}x fp32's)",
            "passed": auto == faster,
        },
    ]


def markdown(document: Mapping[str, Any]) -> str:
    """The table the README shows: steps, losses, gradients and held-out scores side by side; the goals."""
    cpu, steps, heldout = document["cpu"], document["steps"], document["heldout"]
    median, times, warmup = steps["median_seconds"], steps["seconds"], steps["warmup_seconds"]
    features = ", ".join(f"{name} {'yes' if on else 'no'}" for name, on in cpu["torch_features"].items())
    rows = [
        [
            f"forward + backward, batch {document['batch_size']}: median (timed steps)",
            *(f"{median[p]:.2f} s ({len(times[p])})" for p in PRECISIONS),
            f"{steps['bf16_over_fp32']:.2f}x",
        ],
        [
            "the warm-up step",
            *(f"{warmup[p]:.2f} s" for p in PRECISIONS),
            f"{warmup['bf16'] / warmup['fp32']:.2f}x",
        ],
        ["loss of the warm-up step (same batch)", *(f"{steps['loss'][p]:.4f}" for p in PRECISIONS), ""],
        ["its LoRA gradient: cosine similarity to fp32's", "1", f"{steps['gradient_cosine']:.4f}", ""],
    ]
    if heldout:
        held = f"{heldout['utterances']} of {heldout['of']} held-out utterances"
        for key, label in (("wer", "WER"), ("cer", "CER"), ("normalized_wer", "normalized WER")):
            points = 100 * (heldout["bf16"][key] - heldout["fp32"][key])
            shown = [f"{100 * heldout[p][key]:.1f}%" for p in PRECISIONS]
            rows.append([f"{label}, {held}", *shown, f"{points:+.1f} points"])
        same = f"{heldout['identical_transcripts']} of {heldout['utterances']} identical to fp32's"
        rows.append([f"transcripts, {held}", "", same, ""])
        seconds = [heldout[p]["seconds"] for p in PRECISIONS]
        rows.append(
            [
                f"transcribing them, batch {EVAL_BATCH}",
                *(f"{s:.0f} s" for s in seconds),
                f"{seconds[1] / seconds[0]:.2f}x",
            ]
        )
    adapter = "the adapter `make demo` trained" if document["model"]["adapter"] else "a new adapter"
    title = f"**fp32 vs bf16 autocast on this CPU: whisper-base + LoRA r 32 ({adapter}); {cpu['name']}, "
    title += (
        f"{document['machine']['cores']} cores, torch kernels {cpu['torch_cpu_capability']} ({features})**"
    )
    notes = [f"`--precision auto` for training here: {cpu['auto'][1]}."]
    if heldout and "demo_evaluate_wer" in heldout:
        demo = 100 * heldout["demo_evaluate_wer"]
        notes.append(f"The demo's own evaluation of this adapter (merged, fp32): WER {demo:.1f}%.")
    body = [title, table(["", "fp32", "bf16 autocast", "bf16 vs fp32"], rows), " ".join(notes)]
    return "\n\n".join([*body, "**Goals**", goals_table(document["goals"])])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m benchmarks.cpu_precision", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--demo-data", default="demo_data", help="`make demo`'s workdir: adapter, held-out set"
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per precision after a warm-up step")
    parser.add_argument(
        "--budget-s", type=float, default=600, help="a precision's timed steps stop past this"
    )
    parser.add_argument(
        "--utterances",
        type=int,
        help=f"held-out utterances scored (default: all with native bf16, else {EMULATED_UTTERANCES})",
    )
    parser.add_argument("--model", default="model", help="whisper-base directory (built if missing)")
    parser.add_argument("--workdir", default="benchmarks/work", help="without demo outputs: the corpus cache")
    parser.add_argument("--recordings", type=int, default=24, help="without demo outputs: recordings cached")
    parser.add_argument("--output", default="benchmarks/results/cpu_precision.json")
    args = parser.parse_args(argv)
    document = run_benchmark(args)
    publish(document, Path(args.output))
    return 1 if any(goal["passed"] is False for goal in document["goals"]) else 0


if __name__ == "__main__":
    sys.exit(main())
