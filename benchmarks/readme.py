"""Put the latest benchmark results into the READMEs, so that what they show is what the scripts printed.

    python -m benchmarks.readme           # rewrite the marked blocks from benchmarks/results/*.json
    python -m benchmarks.readme --check   # exit 1 where a README differs from the results

A block is the text between `<!-- results:NAME -->` and `<!-- /results:NAME -->`: in benchmarks/README.md
the tables each script printed, in README.md a summary of them and the goals not met. Why a goal was
missed stays prose in benchmarks/README.md, written by whoever ran the benchmarks.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
NAMES = ("prepare", "train_input", "cpu_precision")  # the benchmarks, each with results/NAME.json
Results = Mapping[str, Mapping[str, Any]]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def goals_table(goals: Sequence[Mapping[str, Any]]) -> str:
    """Each goal, what was measured, and PASS, FAIL or SKIP (not measured in this run)."""
    verdicts = {None: "SKIP", True: "PASS", False: "FAIL"}
    return table(
        ["goal", "measured", "result"], [[g["goal"], g["measured"], verdicts[g["passed"]]] for g in goals]
    )


def summary(results: Results) -> str:
    """README.md's block: every goal of every benchmark with its measured figure, then those not met."""
    goals = [goal for name in NAMES for goal in results[name]["goals"]]
    unmet = [f"{goal['goal']}: {goal['measured']}" for goal in goals if goal["passed"] is False]
    verdict = "Every goal these scripts measure was met in this run."
    if unmet:
        verdict = f"Goals not met ({len(unmet)}): {'; '.join(unmet)}. benchmarks/README.md gives each reason."
    return goals_table(goals) + "\n\n" + verdict


BLOCKS = {
    "summary": ROOT / "README.md",
    "prepare": ROOT / "benchmarks" / "README.md",
    "train_input": ROOT / "benchmarks" / "README.md",
    "cpu_precision": ROOT / "benchmarks" / "README.md",
}


def load_results(directory: Path = RESULTS) -> dict[str, Mapping[str, Any]]:
    return {name: json.loads((directory / f"{name}.json").read_text()) for name in NAMES}


def rendered(results: Results) -> dict[Path, str]:
    """Each README with its blocks filled from `results`."""
    texts: dict[Path, str] = {}
    for name, path in BLOCKS.items():
        text = texts.get(path) or path.read_text(encoding="utf-8")
        start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
        if len(pattern.findall(text)) != 1:
            raise SystemExit(f"{path.relative_to(ROOT)}: expected one block {start} ... {end}")
        block = f"{start}\n{summary(results) if name == 'summary' else results[name]['markdown']}\n{end}"
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
