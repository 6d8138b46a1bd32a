"""Put the latest benchmark results into the READMEs, so that what they show is what the scripts printed.

    python -m benchmarks.readme           # rewrite the marked blocks from benchmarks/results/*.json
    python -m benchmarks.readme --check   # exit 1 where a README differs from the results

A block is the text between `<!-- results:NAME -->` and `<!-- /results:NAME -->`. benchmarks/README.md
holds the tables each script printed; README.md a summary of them and the goals not met. The reasons for
those stay prose in benchmarks/README.md, written by whoever ran the benchmarks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
Results = Mapping[str, Mapping[str, Any]]


def _run(prepare: Mapping[str, Any], implementation: str, endpoint: str, scale: str) -> Mapping[str, Any]:
    return next(
        run
        for run in prepare["runs"]
        if (run["implementation"], run["endpoint"], run["scale"]) == (implementation, endpoint, scale)
    )


def summary(results: Results) -> str:
    """README.md's table: the headline figures of both benchmarks, and the goals they did not meet."""
    prepare, train = results["prepare"], results["train_input"]
    settings, compute, noop = prepare["settings"], prepare["compute"], prepare["noop_rerun"]
    seed, ours = _run(prepare, "seed", "loopback", "N"), _run(prepare, "ours", "loopback", "N")
    seed_far, ours_far = _run(prepare, "seed", "latency", "N"), _run(prepare, "ours", "latency", "N")
    ours_4n = _run(prepare, "ours", "loopback", "4N")
    limit = compute["limit_audio_seconds_per_second"]

    def rss(run: Mapping[str, Any]) -> str:
        return f"{run['measured']['peak_rss_bytes'] / 1e9:.2f} GB"

    def per_second(run: Mapping[str, Any]) -> str:
        return f"{run['audio_seconds_per_second']:.0f}"

    def times(run: Mapping[str, Any], base: Mapping[str, Any]) -> str:
        return f"{run['audio_seconds_per_second'] / base['audio_seconds_per_second']:.1f}x"

    gpus, estimates = ("h100", "mig_1g"), train["estimates"]
    step_s = {name: estimates[f"{name}_step_seconds"] for name in gpus}
    shares = {name: train["input_share_of_step"][name] for name in gpus}
    input_time = " / ".join(f"{1000 * shares[name] * step_s[name]:.3f} ms" for name in gpus)
    share_text = " / ".join(f"{shares[name]:.1%}" for name in gpus)
    steps = " / ".join(f"{1000 * step_s[name]:.1f} ms" for name in gpus)
    rows = [
        ["audio-seconds per wall-second, loopback S3", per_second(seed), per_second(ours), times(ours, seed)],
        [
            f"audio-seconds per wall-second, +{settings['latency_ms']:g} ms round trip",
            per_second(seed_far),
            per_second(ours_far),
            times(ours_far, seed_far),
        ],
        [
            f"audio-seconds per wall-second, 4N = {settings['recordings']['4N']} recordings, loopback",
            "",
            per_second(ours_4n),
            f"{ours_4n['audio_seconds_per_second'] / limit:.0%} of the compute limit ({limit:.0f})",
        ],
        [
            "cache per audio-second",
            f"{seed['cache_bytes_per_audio_second'] / 1e3:.1f} KB",
            f"{ours['cache_bytes_per_audio_second'] / 1e3:.1f} KB",
            f"{seed['cache_bytes_per_audio_second'] / ours['cache_bytes_per_audio_second']:.1f}x smaller",
        ],
        [
            "peak memory, process tree RSS",
            rss(seed),
            f"{rss(ours)} ({rss(ours_4n)} at 4N)",
            f"{ours['measured']['peak_rss_bytes'] / seed['measured']['peak_rss_bytes']:.2f}x",
        ],
        [
            "no-op rerun (cache current)",
            "",
            f"{noop['run_prepare_seconds']:.2f} s in `run_prepare`",
            f"{noop['run_prepare_seconds'] / noop['full_run_prepare_seconds']:.1%} of a full run",
        ],
        [
            "training input, one core (compact fp16 batches of 8)",
            "",
            f"{train['loader_examples_per_second']['0']:.0f} examples/s",
            f"{train['input_share_of_step']['cpu']:.2%} of a CPU training step",
        ],
        [
            f"training input per step (wait + device padding), *estimated* H100 / MIG 1g.10gb step ({steps})",
            "",
            input_time,
            f"{share_text} of the step",
        ],
    ]
    table = ["| | seed | ours | ratio |", "|---|---:|---:|---:|"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    goals = [goal for name in ("prepare", "train_input") for goal in results[name]["goals"]]
    unmet = [goal for goal in goals if goal["passed"] is False]
    if unmet:
        listed = "; ".join(f"{goal['goal']}: {goal['measured']}" for goal in unmet)
        verdict = f"Goals not met ({len(unmet)}): {listed}. benchmarks/README.md gives the reason for each."
    else:
        verdict = "Every goal these scripts measure was met in this run."
    return "\n".join(table) + "\n\n" + verdict


BLOCKS: dict[str, tuple[Path, Callable[[Results], str]]] = {
    "summary": (ROOT / "README.md", summary),
    "prepare": (ROOT / "benchmarks" / "README.md", lambda results: results["prepare"]["markdown"]),
    "train_input": (ROOT / "benchmarks" / "README.md", lambda results: results["train_input"]["markdown"]),
}


def load_results(directory: Path = RESULTS) -> dict[str, Mapping[str, Any]]:
    return {name: json.loads((directory / f"{name}.json").read_text()) for name in ("prepare", "train_input")}


def rendered(results: Results) -> dict[Path, str]:
    """Each README with its blocks filled from `results`."""
    texts: dict[Path, str] = {}
    for name, (path, render) in BLOCKS.items():
        text = texts.get(path) or path.read_text(encoding="utf-8")
        start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
        if len(pattern.findall(text)) != 1:
            raise SystemExit(f"{path.relative_to(ROOT)}: expected one block {start} ... {end}")
        block = f"{start}\n{render(results)}\n{end}"
        texts[path] = pattern.sub(lambda _, block=block: block, text)
    return texts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only report READMEs that differ; exit 1 if any")
    args = parser.parse_args(argv)
    stale = []
    for path, text in rendered(load_results()).items():
        if path.read_text(encoding="utf-8") != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(text, encoding="utf-8")
    verb = "differ from benchmarks/results/" if args.check else "updated"
    print(f"{verb}: {', '.join(map(str, stale))}" if stale else "READMEs match benchmarks/results/")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
