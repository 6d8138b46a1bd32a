"""report.html: what a person opens after training. Loss and WER curves (the baseline, every evaluation, the
best step), the worst validation utterances with a word-level diff and their audio, and every setting.

One self-contained file: charts are inline SVG drawn here, no script, no stylesheet or font fetched, so it
renders the same offline, from an archive or a mail attachment.

The audio: training reads only the cache's log-mel features, not audio, so a player points at the
utterance's source (`#t=start,end` plays its region) where a browser can fetch it (a local file or http(s)
URL). An s3:// source gets no player: a presigned URL would put a credential in the file and expire; copy
the region with `aws s3 cp` to listen to it.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import jiwer

from whisper_pipeline.train.metrics import normalize_for_scoring, percent

REPORT_FILE = "report.html"
WORST = 10  # validation utterances listed
WIDTH, HEIGHT, MARGIN = 560, 240, 48  # chart geometry in SVG pixels
STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em}.charts{display:flex;flex-wrap:wrap;gap:1em}
svg{background:#fafafa;border:1px solid #ddd}table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
del{background:#fdd;text-decoration:line-through}ins{background:#dfd;text-decoration:none}
.sub{background:#fec}.muted{color:#777}code{font-size:.95em}
"""


def write_report(
    output_dir: Path,
    metrics: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any] | None,
) -> Path:
    """Write <output_dir>/report.html from the run's metrics, validation predictions and settings."""
    path = Path(output_dir) / REPORT_FILE
    path.write_text(render_report(metrics, predictions, settings), encoding="utf-8")
    return path


def render_report(
    metrics: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]], settings: Mapping[str, Any] | None
) -> str:
    evaluations = [e for e in [metrics.get("baseline"), *metrics.get("evaluations", [])] if e]
    best = metrics.get("best") or {}
    losses = [(e["step"], e["loss"]) for e in metrics.get("train", {}).get("loss_history", [])]
    eval_losses = [(e["step"], e["loss"]) for e in evaluations if e.get("loss") is not None]
    wers = [(e["step"], e["wer"]) for e in evaluations if e.get("wer") is not None]
    best_step = best.get("step")
    charts = [
        line_chart("Loss", {"training": losses, "validation": eval_losses}, best_step, percent=False),
        line_chart("Validation WER", {"WER": wers}, best_step, percent=True),
    ]
    worst = sorted(predictions, key=lambda p: -p.get("normalized_wer", 0))[:WORST]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Training report</title>",
        f"<style>{STYLE}</style></head><body><h1>Training report</h1>",
        _summary(metrics, settings),
        "<h2>Curves</h2><div class='charts'>",
        *charts,
        "</div><p class='muted'>Step 0 is the baseline (the starting model); the dashed line marks the best "
        "step, whose adapter was saved.</p>",
        f"<h2>Worst validation utterances ({len(worst)} of {len(predictions)}, best model)</h2>",
        "<p class='muted'>Normalized text, word by word: <del>deleted</del> reference words, "
        "<ins>inserted</ins> words, <span class='sub'>substitutions</span> as reference → hypothesis.</p>",
        _worst_table(worst),
        "<h2>Settings</h2>",
        _settings_table(settings),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary(metrics: Mapping[str, Any], settings: Mapping[str, Any] | None) -> str:
    baseline, best = metrics.get("baseline") or {}, metrics.get("best") or {}
    train = metrics.get("train", {})
    rows = [
        ("baseline WER", percent(baseline.get("wer"))),
        (f"best WER (step {best.get('step')})", percent(best.get("wer"))),
        ("steps", str(train.get("global_step"))),
        ("model", str(((settings or {}).get("arguments") or {}).get("model", "?"))),
    ]
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def line_chart(
    title: str, series: Mapping[str, Sequence[tuple[float, float]]], marker: float | None, *, percent: bool
) -> str:
    """An SVG line chart of (step, value) series with a dashed vertical line at `marker`."""
    points = [p for values in series.values() for p in values if math.isfinite(p[1])]
    if not points:
        return (
            f"<svg width='{WIDTH}' height='{HEIGHT}' role='img'><title>{title}</title><text x='20' y='30'>"
            f"{html.escape(title)}: no values</text></svg>"
        )
    x_max = max(max(x for x, _ in points), 1)
    y_low, y_high = min(y for _, y in points), max(y for _, y in points)
    y_low, y_high = (y_low - 0.5, y_high + 0.5) if y_low == y_high else (y_low, y_high)
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN

    def sx(x: float) -> float:
        return MARGIN + plot_w * x / x_max

    def sy(y: float) -> float:
        return HEIGHT - MARGIN - plot_h * (y - y_low) / (y_high - y_low)

    def label(y: float) -> str:
        return f"{100 * y:.1f}%" if percent else f"{y:.3g}"

    out = [
        f"<svg width='{WIDTH}' height='{HEIGHT}' viewBox='0 0 {WIDTH} {HEIGHT}' role='img' "
        f"xmlns='http://www.w3.org/2000/svg'><title>{html.escape(title)}</title>",
        f"<text x='{MARGIN}' y='20' font-weight='bold'>{html.escape(title)}</text>",
        f"<line x1='{MARGIN}' y1='{HEIGHT - MARGIN}' x2='{WIDTH - MARGIN}' y2='{HEIGHT - MARGIN}' "
        "stroke='#999'/>",
        f"<line x1='{MARGIN}' y1='{MARGIN}' x2='{MARGIN}' y2='{HEIGHT - MARGIN}' stroke='#999'/>",
    ]
    for y in (y_low, (y_low + y_high) / 2, y_high):
        out.append(
            f"<text x='{MARGIN - 4}' y='{sy(y) + 4:.1f}' font-size='11' text-anchor='end'>{label(y)}</text>"
        )
    out.append(
        f"<text x='{WIDTH - MARGIN}' y='{HEIGHT - MARGIN + 28}' font-size='11' text-anchor='end'>"
        f"step (last {x_max:g})</text>"
    )
    if marker is not None:
        out.append(
            f"<line x1='{sx(marker):.1f}' y1='{MARGIN}' x2='{sx(marker):.1f}' y2='{HEIGHT - MARGIN}' "
            "stroke='#2a2' stroke-dasharray='4 3'><title>best step</title></line>"
        )
    for index, (name, values) in enumerate(series.items()):
        color = ("#1f77b4", "#d62728")[index % 2]
        finite = [(x, y) for x, y in values if math.isfinite(y)]
        if len(finite) > 1:
            path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in finite)
            out.append(f"<polyline fill='none' stroke='{color}' stroke-width='2' points='{path}'/>")
        out += [
            f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='3' fill='{color}'><title>{html.escape(name)} "
            f"step {x:g}: {label(y)}</title></circle>"
            for x, y in finite
        ]
        out.append(
            f"<text x='{WIDTH - MARGIN}' y='{MARGIN - 8 + 14 * index}' font-size='11' fill='{color}' "
            f"text-anchor='end'>{html.escape(name)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def word_diff(reference: str, hypothesis: str) -> str:
    """HTML of the word alignment of normalized reference and hypothesis (jiwer's, as WER counts it)."""
    ref, hyp = normalize_for_scoring(reference), normalize_for_scoring(hypothesis)
    if not ref:
        return f"<ins>{html.escape(hyp)}</ins>" if hyp else ""
    if not hyp:
        return f"<del>{html.escape(ref)}</del>"
    aligned = jiwer.process_words(ref, hyp)
    ref_words, hyp_words = aligned.references[0], aligned.hypotheses[0]
    out = []
    for chunk in aligned.alignments[0]:
        r = " ".join(ref_words[chunk.ref_start_idx : chunk.ref_end_idx])
        h = " ".join(hyp_words[chunk.hyp_start_idx : chunk.hyp_end_idx])
        if chunk.type == "equal":
            out.append(html.escape(r))
        elif chunk.type == "delete":
            out.append(f"<del>{html.escape(r)}</del>")
        elif chunk.type == "insert":
            out.append(f"<ins>{html.escape(h)}</ins>")
        else:
            out.append(f"<span class='sub'>{html.escape(r)} → {html.escape(h)}</span>")
    return " ".join(out)


def audio_player(uri: str, start: float, end: float) -> str:
    """An <audio> element playing the region where a browser can fetch the source, else the source's name."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https", "file") or (not scheme and uri.startswith("/")):
        source = uri if scheme else Path(uri).as_uri()
        src = html.escape(f"{source}#t={start:.2f},{end:.2f}", quote=True)
        return f"<audio controls preload='none' src='{src}'></audio>"
    return f"<span class='muted'>{html.escape(uri)} [{start:.2f}–{end:.2f} s]</span>"


def _worst_table(worst: Sequence[Mapping[str, Any]]) -> str:
    rows = ["<table><tr><th>utterance</th><th>audio</th><th>normalized WER</th><th>diff</th></tr>"]
    for item in worst:
        rows.append(
            f"<tr><td><code>{html.escape(str(item.get('segment_id')))}</code></td>"
            f"<td>{audio_player(str(item.get('audio_uri')), item.get('start', 0), item.get('end', 0))}</td>"
            f"<td>{percent(item.get('normalized_wer'))}</td>"
            f"<td>{word_diff(item.get('reference', ''), item.get('hypothesis', ''))}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _settings_table(settings: Mapping[str, Any] | None) -> str:
    if not settings:
        return "<p class='muted'>train_config.yaml not found</p>"
    rows = []
    for section in ("resolved", "cache", "versions", "arguments"):
        for key, value in (settings.get(section) or {}).items():
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            rows.append(
                f"<tr><td>{section}</td><th>{html.escape(str(key))}</th><td>{html.escape(shown)}</td></tr>"
            )
    return (
        "<details open><summary>every setting of the run (train_config.yaml)</summary><table>"
        + "".join(rows)
        + "</table></details>"
    )
