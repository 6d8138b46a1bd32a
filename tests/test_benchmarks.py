"""The READMEs show what the benchmark scripts last wrote to benchmarks/results/."""

import copy

from benchmarks.readme import NAMES, load_results, rendered, summary


def test_the_readmes_show_the_committed_results():
    for path, text in rendered(load_results()).items():
        assert path.read_text(encoding="utf-8") == text, f"run python -m benchmarks.readme ({path.name})"


def test_the_summary_lists_every_goal_not_met_with_its_figure():
    results = copy.deepcopy(load_results())
    for name in NAMES:
        for goal in results[name]["goals"]:
            goal["passed"] = True
    assert "Every goal these scripts measure was met" in summary(results)
    missed = results["prepare"]["goals"][0]
    missed.update(passed=False, measured="2.5x (75 vs 30 audio-s/s)")
    text = summary(results)
    assert "Goals not met (1)" in text and f"{missed['goal']}: 2.5x (75 vs 30 audio-s/s)" in text
