"""Synthetic speech, encodings and Label Studio exports: what the demo, benchmarks and tests are built on."""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest

from tests.fixtures.audio import RECORDING_TEXTS
from whisper_pipeline.constants import SAMPLE_RATE
from whisper_pipeline.errors import AnnotationError, PipelineError
from whisper_pipeline.prepare.annotations import (
    AnnotationSettings,
    RegionKind,
    Task,
    load_export,
    parse_export,
)
from whisper_pipeline.prepare.audio import cut, decode_audio
from whisper_pipeline.testing.synthetic import (
    AUDIO_FORMATS,
    NOISE,
    LabelStudioExport,
    Part,
    SynthesisError,
    Utterance,
    compose,
    encode_audio,
    noise,
    quantize_pcm16,
    synthesize,
)

DURATION_TOLERANCE_S = 0.05
HELLO = Utterance("Xin chào các bạn", 0.52, 3.1)
THANKS = Utterance("Cảm ơn bạn", 3.4, 5.0)


def parse(export: LabelStudioExport, settings: AnnotationSettings | None = None):
    """The builder's bytes through the real parser, as prepare_data.py reads an uploaded export."""
    return parse_export(load_export(export.to_json().encode()), settings or AnnotationSettings())


def speech_texts(task: Task) -> list[str]:
    return [region.text for region in task.regions if region.kind is RegionKind.SPEECH]


# --- speech ---------------------------------------------------------------------------------------


def test_synthesize_is_deterministic_16_khz_mono_float32():
    first = synthesize("Xin chào các bạn")
    again = synthesize("Xin chào các bạn")
    assert first.dtype == np.float32 and first.ndim == 1
    assert np.array_equal(first, again)
    assert 0.8 < len(first) / SAMPLE_RATE < 3.0
    assert 0.1 < np.abs(first).max() <= 1.0


def test_voice_speed_and_pitch_change_the_speech():
    north = synthesize("Cảm ơn bạn rất nhiều")
    assert not np.array_equal(north[:8000], synthesize("Cảm ơn bạn rất nhiều", "vi-vn-x-south")[:8000])
    assert len(synthesize("Cảm ơn bạn rất nhiều", speed=100)) > 1.3 * len(north)
    assert not np.array_equal(north, synthesize("Cảm ơn bạn rất nhiều", pitch=80))


def test_text_reaches_espeak_as_text_never_as_options():
    """A text starting with "-" would switch espeak-ng's voice if it were passed as an argument."""
    assert np.array_equal(synthesize("-v en hello"), synthesize("-v en hello", "vi"))
    assert not np.array_equal(synthesize("-v en hello"), synthesize("hello", "en"))


def test_blank_text_bad_settings_and_unknown_voices_are_refused():
    with pytest.raises(ValueError, match="needs some text"):
        synthesize(" \n")
    with pytest.raises(ValueError, match="speed"):
        synthesize("xin chào", speed=20)
    with pytest.raises(SynthesisError, match="voice 'xx-nowhere'"):
        synthesize("xin chào", "xx-nowhere")


def test_missing_espeak_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(
        PipelineError, match=r"^espeak-ng is not installed; .*apt-get install espeak-ng"
    ) as caught:
        synthesize("xin chào")
    assert "\n" not in str(caught.value)


def test_noise_is_seeded_pink_and_at_its_level():
    burst = noise(0.6, seed=3, level=0.05)
    assert burst.dtype == np.float32 and len(burst) == round(0.6 * SAMPLE_RATE)
    assert np.array_equal(burst, noise(0.6, seed=3, level=0.05))
    assert not np.array_equal(burst, noise(0.6, seed=4, level=0.05))
    assert np.sqrt(np.mean(burst**2)) == pytest.approx(0.05, rel=0.05)  # the fades take a little
    assert burst[0] == 0.0 and abs(burst[-1]) < 1e-3
    power = np.abs(np.fft.rfft(noise(4.0, seed=3))) ** 2
    frequencies = np.fft.rfftfreq(4 * SAMPLE_RATE, d=1 / SAMPLE_RATE)
    low, high = (
        power[(frequencies > 100) & (frequencies < 400)],
        power[(frequencies > 4000) & (frequencies < 7000)],
    )
    assert low.mean() > 10 * high.mean()  # pink: power falls with frequency


# --- encodings --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_every_format_decodes_to_the_clip(speech_clips, fmt):
    """WAV and FLAC give back exactly the samples rounded to 16 bits. MP3 carries LAME's gapless header,
    which libsndfile's decoder honours, so it comes back at the exact length here; decoders that ignore the
    header add the encoder's delay and padding (about 30 ms through ffmpeg at 16 kHz), which the 50 ms
    tolerance allows."""
    for clip in speech_clips:
        decoded = decode_audio(clip.bytes(fmt), name=clip.paths[fmt].name)
        assert abs(len(decoded) - len(clip.samples)) / SAMPLE_RATE <= DURATION_TOLERANCE_S, clip.name
        length = min(len(decoded), len(clip.samples))
        if fmt in ("wav", "flac"):
            assert np.array_equal(decoded, quantize_pcm16(clip.samples)), clip.name
        else:
            correlation = np.corrcoef(decoded[:length], clip.samples[:length])[0, 1]
            assert correlation > 0.98, (clip.name, correlation)


@pytest.mark.parametrize("fmt", AUDIO_FORMATS)
def test_encoding_gives_the_same_bytes_every_time(speech_clips, fmt):
    """OGG too: libsndfile would draw a random stream serial per file; ffmpeg in bitexact mode does not."""
    clip = speech_clips[0]
    assert encode_audio(clip.samples, SAMPLE_RATE, fmt) == clip.bytes(fmt)
    assert encode_audio(clip.samples, SAMPLE_RATE, fmt) == encode_audio(clip.samples, SAMPLE_RATE, fmt)


def test_encoding_clips_peaks_and_refuses_unknown_formats():
    loud = np.array([0.0, 1.5, -1.5, 0.5], dtype=np.float32)
    decoded = decode_audio(encode_audio(np.tile(loud, 4000), SAMPLE_RATE, "wav"))
    assert np.array_equal(decoded[:4], [0.0, 32767 / 32768, -1.0, 0.5])
    with pytest.raises(ValueError, match="unknown audio format 'aac'"):
        encode_audio(loud, SAMPLE_RATE, "aac")


def test_fixture_clips_cover_vietnamese_voices_and_english(speech_clips):
    assert {clip.voice for clip in speech_clips if clip.language == "vi"} >= {"vi", "vi-vn-x-south"}
    assert sum(clip.language == "vi" for clip in speech_clips) >= 3
    assert sum(clip.language == "en" for clip in speech_clips) >= 2
    for clip in speech_clips:
        assert set(clip.paths) == set(AUDIO_FORMATS)
        assert clip.duration == pytest.approx(len(synthesize(clip.text, clip.voice)) / SAMPLE_RATE)


# --- recordings ---------------------------------------------------------------------------------------


def test_compose_puts_each_part_exactly_at_its_region():
    first, second = synthesize("một hai ba"), synthesize("bốn năm")
    burst = noise(0.3, seed=1)
    samples, regions = compose(
        [Part(first, "một hai ba"), Part(burst, label=NOISE), Part(second, "bốn năm")], gap_s=0.5, edge_s=0.2
    )
    assert [(region.text, region.label) for region in regions] == [
        ("một hai ba", "speech"),
        ("", NOISE),
        ("bốn năm", "speech"),
    ]
    assert regions[0].start == 0.2
    assert regions[1].start == pytest.approx(regions[0].end + 0.5)
    assert len(samples) / SAMPLE_RATE == pytest.approx(regions[-1].end + 0.2)
    inside = np.zeros(len(samples), dtype=bool)
    for region, part in zip(regions, (first, burst, second), strict=True):
        begin, stop = round(region.start * SAMPLE_RATE), round(region.end * SAMPLE_RATE)
        assert np.array_equal(samples[begin:stop], part)
        inside[begin:stop] = True
    assert not samples[~inside].any()  # silence between and around the regions


def test_recording_regions_match_where_the_speech_is(multi_utterance_recording, label_studio_export):
    """Draw the regions in an export, parse it, cut the decoded FLAC there: each cut is its utterance."""
    recording = multi_utterance_recording
    export = label_studio_export()
    export.add_task(
        "s3://speech-bucket/raw/call_0001.flac", recording.utterances, duration=recording.duration
    )
    (task,) = parse(export).tasks
    assert speech_texts(task) == list(RECORDING_TEXTS)
    assert [region.kind for region in task.regions] == [
        RegionKind.SPEECH,
        RegionKind.SPEECH,
        RegionKind.EXCLUDED,
        RegionKind.SPEECH,
    ]
    decoded = decode_audio(recording.path.read_bytes())
    assert len(decoded) == len(recording.samples)
    covered = np.zeros(len(decoded), dtype=bool)
    for region in task.regions:
        piece = cut(decoded, region.start, region.end)
        begin = round(region.start * SAMPLE_RATE)
        assert np.array_equal(piece, quantize_pcm16(recording.samples[begin : begin + len(piece)]))
        assert np.sqrt(np.mean(piece**2)) > 0.02
        covered[begin : begin + len(piece)] = True
    assert not decoded[~covered].any()


# --- the full JSON export -----------------------------------------------------------------------------


def test_export_has_label_studios_shape(label_studio_export):
    export = label_studio_export()
    task = export.add_task("/data/upload/3/5f2c1a9e-call.flac", [HELLO, Utterance("", 3.4, 4.0, NOISE)])
    document = json.loads(export.to_json())
    assert document == [task]
    assert {"id", "data", "annotations", "predictions", "drafts", "meta", "file_upload", "inner_id",
            "total_annotations", "cancelled_annotations", "project"} <= set(task)  # fmt: skip
    assert task["file_upload"] == "5f2c1a9e-call.flac"
    (annotation,) = task["annotations"]
    assert {"id", "completed_by", "result", "was_cancelled", "ground_truth", "created_at", "updated_at",
            "lead_time", "task", "project"} <= set(annotation)  # fmt: skip
    labels, text, noise_label = annotation["result"]
    assert labels["id"] == text["id"] != noise_label["id"]
    assert (labels["from_name"], labels["type"], labels["value"]) == (
        "label",
        "labels",
        {"start": 0.52, "end": 3.1, "channel": 0, "labels": ["speech"]},
    )
    assert (text["from_name"], text["to_name"], text["origin"], text["value"]) == (
        "transcription",
        "audio",
        "manual",
        {"start": 0.52, "end": 3.1, "channel": 0, "text": ["Xin chào các bạn"]},
    )
    assert noise_label["value"]["labels"] == [NOISE]


def test_export_bytes_depend_only_on_the_seed_and_the_calls(label_studio_export):
    def build(seed: int) -> str:
        export = label_studio_export(seed=seed)
        task = export.add_task("s3://bucket/a.flac", [HELLO, THANKS])
        export.add_annotation(task, [HELLO])
        return export.to_json()

    assert build(1) == build(1)
    assert build(1) != build(2)


def test_parsed_export_holds_the_texts_and_drops_noise(label_studio_export):
    export = label_studio_export()
    export.add_task("s3://bucket/a.flac", [HELLO, Utterance("", 3.2, 3.3, NOISE), THANKS])
    export.add_task("s3://bucket/b.flac", [Utterance("(tiếng ồn)", 0.0, 1.0, NOISE), THANKS])
    parsed = parse(export)
    assert [speech_texts(task) for task in parsed.tasks] == [[HELLO.text, THANKS.text], [THANKS.text]]
    assert parsed.regions_by_kind == {"speech": 3, "excluded": 2, "untranscribed": 0}
    first = parsed.tasks[0]
    assert [(region.start, region.end) for region in first.regions] == [(0.52, 3.1), (3.2, 3.3), (3.4, 5.0)]


def test_cancelled_annotations_are_ignored(label_studio_export):
    export = label_studio_export()
    task = export.add_task("s3://bucket/a.flac", [HELLO])
    export.add_annotation(task, [Utterance("bỏ qua", 0.5, 3.0)], cancelled=True)  # newer, but skipped
    export.add_task("s3://bucket/b.flac", None)
    export.add_annotation(export.tasks[-1], [], cancelled=True)
    parsed = parse(export)
    assert [speech_texts(task) for task in parsed.tasks] == [[HELLO.text]]
    assert [skip.reason for skip in parsed.skips] == ["only_cancelled_annotations"]
    assert (task["total_annotations"], task["cancelled_annotations"]) == (1, 1)


def test_the_newest_annotation_wins_unless_one_is_ground_truth(label_studio_export):
    export = label_studio_export()
    corrected = export.add_task("s3://bucket/newer.flac", [Utterance("xin chao", 0.5, 3.0)])
    export.add_annotation(corrected, [HELLO])
    kept = export.add_task("s3://bucket/older.flac", [HELLO])
    export.add_annotation(kept, [Utterance("bản nháp cũ", 0.5, 3.0)], older=True)
    reviewed = export.add_task("s3://bucket/reviewed.flac", [THANKS])
    export.add_annotation(reviewed, [HELLO], ground_truth=True, older=True)
    export.add_annotation(reviewed, [Utterance("mới nhất", 0.5, 3.0)])
    assert [speech_texts(task) for task in parse(export).tasks] == [[HELLO.text]] * 3


def test_predictions_are_never_labels(label_studio_export):
    export = label_studio_export()
    annotated = export.add_task("s3://bucket/a.flac", [HELLO])
    export.add_prediction(annotated, [Utterance("mô hình đoán", 0.5, 3.0)])
    export.add_prediction(export.add_task("s3://bucket/b.flac", None), [THANKS])
    parsed = parse(export)
    assert [speech_texts(task) for task in parsed.tasks] == [[HELLO.text]]
    assert [(skip.reason, skip.task_id) for skip in parsed.skips] == [("only_predictions", "2")]
    assert annotated["predictions"][0]["result"][0]["origin"] == "prediction"


def test_lines_are_joined_and_nfd_text_is_composed(label_studio_export):
    composed = "Tôi muốn đặt một bàn"
    export = label_studio_export()
    task = export.add_task(
        "s3://bucket/a.flac",
        [
            Utterance("Xin chào\n các bạn ", 0.0, 1.0),
            Utterance(unicodedata.normalize("NFD", composed), 1.5, 3.0),
        ],
    )
    assert task["annotations"][0]["result"][1]["value"]["text"] == ["Xin chào", " các bạn "]
    (parsed,) = parse(export).tasks
    assert speech_texts(parsed) == ["Xin chào các bạn", composed]


def test_regions_without_text_or_without_label(label_studio_export):
    export = label_studio_export()
    task = export.add_task(
        "s3://bucket/a.flac", [Utterance("", 0.0, 1.0), Utterance("không nhãn", 1.5, 3.0, label=None)]
    )
    assert [result["type"] for result in task["annotations"][0]["result"]] == ["labels", "textarea"]
    (parsed,) = parse(export).tasks
    assert [(region.kind, region.text, region.labels) for region in parsed.regions] == [
        (RegionKind.UNTRANSCRIBED, "", ("speech",)),
        (RegionKind.SPEECH, "không nhãn", ()),
    ]


def test_control_names_follow_the_labelling_configuration(label_studio_export):
    export = label_studio_export(label_from_name="kind", text_from_name="transcript", audio_key="url")
    export.add_task("s3://bucket/a.flac", [HELLO, Utterance("", 3.2, 3.3, NOISE)])
    settings = AnnotationSettings(text_from_name="transcript", label_from_name="kind", audio_key="url")
    (task,) = parse(export, settings).tasks
    assert speech_texts(task) == [HELLO.text]
    assert [region.kind for region in task.regions] == [RegionKind.SPEECH, RegionKind.EXCLUDED]
    assert parse(export, AnnotationSettings(audio_key="url")).tasks == ()  # other names: nothing matches


def test_written_export_loads_from_disk(label_studio_export, tmp_path):
    export = label_studio_export()
    export.add_task("/data/local-files/?d=calls/a.flac", [HELLO])
    path = export.write(tmp_path / "project-3-at-2026-05-02.json")
    (task,) = parse_export(load_export(path.read_bytes(), source=path.name), AnnotationSettings()).tasks
    assert (task.audio_uri, speech_texts(task)) == ("/data/local-files/?d=calls/a.flac", [HELLO.text])


# --- the lossy exports ----------------------------------------------------------------------------------


def lossy_exports(tasks: int) -> dict[str, tuple[str, str]]:
    """Each lossy export of a project with `tasks` tasks: {case: (format named in the refusal, text)}."""
    export = LabelStudioExport()
    for index in range(tasks):
        export.add_task(
            f"s3://bucket/{index}.flac", [HELLO, Utterance("", 3.2, 3.3, NOISE), THANKS], duration=5.5
        )
    return {
        "json_min": ("JSON_MIN", export.to_json_min()),
        "csv": ("CSV/TSV", export.to_csv()),
        "tsv": ("CSV/TSV", export.to_csv(sep="\t")),
        "asr_manifest": ("ASR_MANIFEST", export.to_asr_manifest()),
    }


@pytest.mark.parametrize("tasks", [1, 3])
@pytest.mark.parametrize("case", ["json_min", "csv", "tsv", "asr_manifest"])
def test_lossy_exports_are_refused_in_one_line(case, tasks):
    format_name, text = lossy_exports(tasks)[case]
    with pytest.raises(AnnotationError) as caught:
        load_export(text.encode(), source="export.json")
    message = str(caught.value)
    assert "\n" not in message
    assert f"Label Studio's {format_name} export" in message
    assert 'as "JSON"' in message


def test_lossy_exports_follow_label_studios_shapes():
    exports = lossy_exports(2)
    (first, _) = json.loads(exports["json_min"][1])
    assert {"data", "annotations"}.isdisjoint(first)
    assert first["audio"] == "s3://bucket/0.flac" and first["transcription"] == [HELLO.text, THANKS.text]
    assert [value["labels"] for value in first["label"]] == [["speech"], [NOISE], ["speech"]]
    header, row, _ = exports["csv"][1].splitlines()
    assert header.split(",")[:4] == ["audio", "id", "label", "transcription"]
    assert row.startswith("s3://bucket/0.flac,1,")
    records = [json.loads(line) for line in exports["asr_manifest"][1].splitlines()]
    assert records[0] == {"audio_filepath": "audio/0.flac", "duration": 5.5, "text": HELLO.text}
