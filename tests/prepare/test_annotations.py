"""The Label Studio parser on real-shaped exports: annotation choice, region pairing, text, refusals."""

import json
import unicodedata

import pytest

from whisper_pipeline.errors import AnnotationError
from whisper_pipeline.prepare.annotations import (
    AnnotationSettings,
    ControlNames,
    LabelConfig,
    RegionKind,
    choose_annotation,
    load_export,
    normalize_text,
    parse_export,
    parse_label_config,
    resolve_controls,
)
from whisper_pipeline.testing.synthetic import LabelStudioExport, Utterance

SETTINGS = AnnotationSettings()
HELLO = "Xin chào các bạn."
WEATHER = "Hôm nay trời đẹp quá."


def _parse(export: LabelStudioExport, settings: AnnotationSettings = SETTINGS):
    return parse_export(load_export(export.to_json().encode()), settings)


def _texts(parsed) -> list[list[str]]:
    return [[r.text for r in task.regions if r.kind is RegionKind.SPEECH] for task in parsed.tasks]


def test_regions_pair_label_and_text_by_id_and_come_in_time_order():
    export = LabelStudioExport()
    export.add_task("s3://b/a.flac", [Utterance(WEATHER, 4.0, 6.0), Utterance(HELLO, 0.5, 3.0)])
    parsed = _parse(export)
    (task,) = parsed.tasks
    assert [(r.start, r.end, r.text, r.labels) for r in task.regions] == [
        (0.5, 3.0, HELLO, ("speech",)),
        (4.0, 6.0, WEATHER, ("speech",)),
    ]
    assert parsed.tasks_read == 1 and not parsed.skips


def test_noise_regions_keep_their_place_but_add_no_text_and_are_counted():
    export = LabelStudioExport()
    export.add_task(
        "s3://b/a.flac",
        [Utterance(HELLO, 0.5, 3.0), Utterance("", 3.2, 4.0, "noise"), Utterance(WEATHER, 4.2, 6.0)],
    )
    parsed = _parse(export)
    kinds = [r.kind for r in parsed.tasks[0].regions]
    assert kinds == [RegionKind.SPEECH, RegionKind.EXCLUDED, RegionKind.SPEECH]
    assert _texts(parsed) == [[HELLO, WEATHER]]
    assert [s.reason for s in parsed.skips] == ["excluded_label"]
    assert parsed.regions_by_kind["excluded"] == 1


def test_excluded_labels_match_case_insensitively_even_with_text():
    export = LabelStudioExport()
    export.add_task("s3://b/a.flac", [Utterance(HELLO, 0.5, 3.0), Utterance("ồn ào", 3.5, 4.0, "Noise")])
    assert _texts(_parse(export)) == [[HELLO]]


def test_newest_non_cancelled_annotation_wins_unless_one_is_ground_truth():
    export = LabelStudioExport()
    task = export.add_task("s3://b/a.flac", [Utterance("first draft", 0.5, 3.0)])
    export.add_annotation(task, [Utterance(HELLO, 0.5, 3.0)])  # newer
    export.add_annotation(task, [Utterance("cancelled", 0.5, 3.0)], cancelled=True)  # newest, cancelled
    export.add_annotation(task, [Utterance("oldest", 0.5, 3.0)], older=True)
    assert _texts(_parse(export)) == [[HELLO]]
    export.add_annotation(task, [Utterance(WEATHER, 0.5, 3.0)], older=True, ground_truth=True)
    assert _texts(_parse(export)) == [[WEATHER]]


def test_cancelled_only_and_prediction_only_tasks_are_counted_skips():
    export = LabelStudioExport()
    cancelled = export.add_task("s3://b/cancelled.flac", None)
    export.add_annotation(cancelled, [Utterance(HELLO, 0.5, 3.0)], cancelled=True)
    predicted = export.add_task("s3://b/predicted.flac", None)
    export.add_prediction(predicted, [Utterance(HELLO, 0.5, 3.0)])
    export.add_task("s3://b/kept.flac", [Utterance(WEATHER, 0.5, 3.0)])
    parsed = _parse(export)
    assert [t.audio_uri for t in parsed.tasks] == ["s3://b/kept.flac"]
    assert sorted(s.reason for s in parsed.skips) == ["only_cancelled_annotations", "only_predictions"]


def test_predictions_never_become_labels_even_next_to_an_annotation():
    export = LabelStudioExport()
    task = export.add_task("s3://b/a.flac", [Utterance(HELLO, 0.5, 3.0)])
    export.add_prediction(task, [Utterance("model guess", 0.5, 3.0)])
    assert _texts(_parse(export)) == [[HELLO]]


def test_text_lists_are_joined_whitespace_collapsed_and_nfd_composed():
    nfd = unicodedata.normalize("NFD", "Tiếng  Việt\n rất hay")
    export = LabelStudioExport()
    export.add_task("s3://b/a.flac", [Utterance(nfd, 0.5, 3.0)])
    (text,) = _texts(_parse(export))[0]
    assert text == "Tiếng Việt rất hay" and unicodedata.is_normalized("NFC", text)
    assert normalize_text(["  Xin ", "chào! "]) == "Xin chào!"


def test_empty_text_is_untranscribed_and_a_task_without_speech_is_skipped():
    export = LabelStudioExport()
    export.add_task("s3://b/a.flac", [Utterance("   ", 0.5, 3.0)])
    parsed = _parse(export)
    assert not parsed.tasks
    assert sorted(s.reason for s in parsed.skips) == ["empty_text", "no_transcribed_speech"]
    assert parsed.regions_by_kind["untranscribed"] == 1


def test_a_task_of_noise_alone_is_kept_for_no_speech_examples():
    export = LabelStudioExport()
    export.add_task("s3://b/a.flac", [Utterance("", 0.5, 3.0, "noise")])
    parsed = _parse(export)
    assert [[region.kind for region in task.regions] for task in parsed.tasks] == [[RegionKind.EXCLUDED]]
    assert [s.reason for s in parsed.skips] == ["excluded_label"]


@pytest.mark.parametrize("start, end", [(3.0, 1.0), (-1.0, 2.0), (float("nan"), 2.0), ("x", 2.0), (1.0, 1.0)])
def test_invalid_region_times_are_counted_skips(start, end):
    export = LabelStudioExport()
    task = export.add_task("s3://b/a.flac", [Utterance(HELLO, 0.5, 3.0), Utterance(WEATHER, 4.0, 6.0)])
    for result in task["annotations"][0]["result"]:
        if WEATHER in json.dumps(result, ensure_ascii=False) or result["id"] == _region_id(task, WEATHER):
            result["value"]["start"], result["value"]["end"] = start, end
    parsed = _parse(export)
    assert _texts(parsed) == [[HELLO]]
    assert [s.reason for s in parsed.skips] == ["invalid_region_times"]


def _region_id(task, text):
    return next(r["id"] for r in task["annotations"][0]["result"] if r["value"].get("text") == [text])


def test_tasks_without_audio_and_non_task_items_are_skipped_not_fatal():
    export = LabelStudioExport()
    export.add_task("s3://b/a.flac", [Utterance(HELLO, 0.5, 3.0)])
    broken = export.add_task("s3://b/b.flac", [Utterance(WEATHER, 0.5, 3.0)])
    broken["data"] = {"image": "x.png"}
    document = [*json.loads(export.to_json()), "garbage", 42]
    parsed = parse_export(document, SETTINGS)
    assert len(parsed.tasks) == 1
    assert sorted(s.reason for s in parsed.skips) == ["no_audio", "not_a_task", "not_a_task"]


def test_configurable_control_names_and_audio_key():
    export = LabelStudioExport(label_from_name="kind", text_from_name="text", audio_key="wav")
    export.add_task("s3://b/a.flac", [Utterance(HELLO, 0.5, 3.0)])
    settings = AnnotationSettings(text_from_name="text", label_from_name="kind", audio_key="wav")
    assert _texts(_parse(export, settings)) == [[HELLO]]
    assert not _parse(export).tasks  # the default names find nothing


def test_choose_annotation_ignores_cancelled():
    assert choose_annotation([{"was_cancelled": True, "id": 1}]) is None


def _lossy_exports() -> dict[str, bytes]:
    export = LabelStudioExport()
    export.add_task("/data/upload/3/a.flac", [Utterance(HELLO, 0.5, 3.0)], duration=3.5)
    export.add_task("/data/upload/3/b.flac", [Utterance(WEATHER, 0.5, 3.0)], duration=3.5)
    return {
        "JSON_MIN": export.to_json_min().encode(),
        "CSV": export.to_csv().encode(),
        "TSV": export.to_csv(sep="\t").encode(),
        "ASR_MANIFEST": export.to_asr_manifest().encode(),
    }


@pytest.mark.parametrize("name", ["JSON_MIN", "CSV", "TSV", "ASR_MANIFEST"])
def test_lossy_export_formats_are_refused_in_one_line_asking_for_json(name):
    with pytest.raises(AnnotationError) as error:
        load_export(_lossy_exports()[name], source="export.x")
    message = str(error.value)
    assert "\n" not in message and 'as "JSON"' in message


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"", "empty"),
        (b"[]", "no tasks"),
        (b'[{"data": ', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b'{"tasks": []}', "JSON object"),
    ],
)
def test_unreadable_exports_are_one_line_errors(raw, fragment):
    with pytest.raises(AnnotationError, match=fragment) as error:
        load_export(raw)
    assert "\n" not in str(error.value)


# --- controls found by themselves -------------------------------------------------------------------

SEGMENTS_CONFIG = """<View>
  <Labels name="labels" toName="audio"><Label value="Speech"/><Label value="Noise"/></Labels>
  <Audio name="audio" value="$url"/>
  <TextArea name="transcription" toName="audio" rows="2" editable="true" perRegion="true" required="true"/>
</View>"""


def _resolve(export: LabelStudioExport, names: ControlNames | None = None, config=None):
    document = load_export(export.to_json().encode())
    return resolve_controls(document, names or ControlNames(), ("noise",), config)


def test_controls_come_from_the_export_when_no_config_is_known():
    export = LabelStudioExport(label_from_name="labels", text_from_name="text", audio_key="url")
    export.add_task("s3://b/a.flac", [Utterance(HELLO, 0.5, 3.0), Utterance("[ồn]", 3.2, 4.0, "Noise")])
    controls = _resolve(export)
    assert (controls.settings.text_from_name, controls.settings.label_from_name) == ("text", "labels")
    assert controls.settings.audio_key == "url"
    assert set(controls.found_in.values()) == {"export"}
    assert "[ồn]" not in _texts(_parse(export, controls.settings))[0]


def test_controls_come_from_the_label_config_when_known():
    config = parse_label_config(SEGMENTS_CONFIG)
    assert config == LabelConfig(textareas=("transcription",), labels=("labels",), audio_keys=("url",))
    export = LabelStudioExport(label_from_name="labels", audio_key="url")
    export.add_task("/data/upload/1/a.wav", [Utterance(HELLO, 0.5, 3.0)])
    controls = _resolve(export, config=config)
    assert controls.settings.label_from_name == "labels" and controls.found_in["audio_key"] == "label config"


def test_ambiguous_and_unused_names_are_clear_errors():
    export = LabelStudioExport()
    task = export.add_task("s3://b/a.flac", [Utterance(HELLO, 0.5, 3.0)])
    other = json.loads(json.dumps(task["annotations"][0]["result"][1]))
    other["from_name"] = "notes"
    task["annotations"][0]["result"].append(other)
    with pytest.raises(AnnotationError, match=r"2 textarea controls \(transcription, notes\).*--text-from"):
        _resolve(export)
    with pytest.raises(AnnotationError, match=r"--label-from-name labels: no result.*label \(labels\)"):
        _resolve(export, ControlNames(text_from_name="transcription", label_from_name="labels"))
    with pytest.raises(AnnotationError, match=r"--audio-key url: no task's data holds it.*audio"):
        _resolve(export, ControlNames(text_from_name="transcription", audio_key="url"))


def test_a_whole_file_transcription_is_one_region_over_the_file():
    export = LabelStudioExport()
    task = export.add_task("s3://b/a.flac", [Utterance("Xin chào\ncác bạn.", 0.0, 1.0, None)])
    for result in task["annotations"][0]["result"]:
        del result["value"]["start"], result["value"]["end"]
    parsed = _parse(export, AnnotationSettings(label_from_name=None))
    (region,) = parsed.tasks[0].regions
    assert region.whole_file and (region.start, region.text, region.kind) == (0.0, HELLO[:-1] + ".", "speech")
    assert not parsed.skips
