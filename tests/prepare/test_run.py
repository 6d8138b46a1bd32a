"""prepare_data.py end to end: espeak audio on moto S3 over TLS, the tiny model's processor, a real cache
(the command itself, killed in three phases or given user errors, is marked e2e)."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import threading
import unicodedata
from dataclasses import asdict, replace
from pathlib import Path

import datasets
import numpy as np
import pytest
from transformers import WhisperFeatureExtractor, WhisperTokenizerFast

from tests.fixtures.cache import cache_digest, prepare_arguments, prepare_command
from tests.fixtures.processes import kill_in_phase
from whisper_pipeline.cache import clean_rows, exclusive_lock, open_cache, whole_recordings
from whisper_pipeline.constants import TIME_PRECISION
from whisper_pipeline.errors import CacheError, ModelError
from whisper_pipeline.prepare import run as prepare
from whisper_pipeline.prepare.audio import cut, decode_audio
from whisper_pipeline.prepare.augment import AugmentationSettings
from whisper_pipeline.prepare.features import pad_features
from whisper_pipeline.prepare.http import HttpAccess, HttpSettings
from whisper_pipeline.prepare.run import TooManyFailures, run_prepare
from whisper_pipeline.prepare.sources import LIST_MIN_OBJECTS, AudioAccess, S3Access, S3Settings, listings
from whisper_pipeline.testing.synthetic import (
    NOISE,
    LabelStudioExport,
    Part,
    Utterance,
    compose,
    encode_audio,
    synthesize,
)

REPO = Path(__file__).resolve().parents[2]
COLUMNS = {"input_features", "labels", "text", "audio_uri", "segment_id", "start", "end", "augmentation"}


def _copy(cache: Path, tmp_path: Path) -> Path:
    target = tmp_path / "processed_data"
    shutil.copytree(cache, target)
    return target


def test_cache_layout_columns_and_kept_texts(prepared_cache, staged_corpus):
    splits = {
        split: datasets.load_from_disk(str(prepared_cache / split)) for split in ("train", "validation")
    }
    texts_by_uri: dict[str, list[str]] = {}
    for dataset in splits.values():
        assert set(dataset.column_names) >= COLUMNS
        for row in dataset.select_columns(["audio_uri", "text", "augmentation", "segment_id"]):
            if row["augmentation"] == 0:
                texts_by_uri.setdefault(row["audio_uri"], []).append(row["text"])
    # every transcript kept, in order; no-speech windows (noise alone) add an empty text
    assert {uri: " ".join(text for text in texts if text) for uri, texts in texts_by_uri.items()} == {
        uri: " ".join(texts) for uri, texts in staged_corpus.texts.items()
    }
    report = json.loads((prepared_cache / "prepare_report.json").read_text())
    no_speech = sum(1 for dataset in splits.values() for text in dataset["text"] if not text)
    assert no_speech and sum(report["no_speech_examples"].values()) == no_speech
    # Grouped by recording: no audio in both splits; only training rows are augmented.
    uris = {split: set(dataset["audio_uri"]) for split, dataset in splits.items()}
    assert uris["train"] and uris["validation"] and not uris["train"] & uris["validation"]
    assert set(splits["validation"]["augmentation"]) == {0}
    assert set(splits["train"]["augmentation"]) == {0, 1}
    # Written one recording at a time (CacheBuilder.append): one record batch per recording.
    for dataset in splits.values():
        batches = dataset.data.table.to_batches()
        assert [set(batch.column("audio_uri").to_pylist()) for batch in batches] == [
            {uri} for uri in dict.fromkeys(dataset["audio_uri"])
        ]
    assert report["recordings"]["total"] == len(staged_corpus.texts) and report["recordings"]["failed"] == 0
    assert report["skips"]["by_reason"] == {"excluded_label": 1}
    assert report["examples"]["train"] == len(splits["train"]) == 2 * report["windows"]["train"]
    assert report["augmented_examples"] == report["windows"]["train"]
    assert report["cache_bytes"] > 0 and report["audio_seconds"]["train"] > 0


def test_validation_recordings_of_several_utterances_are_also_kept_whole(
    long_form_cache, staged_corpus, multi_utterance_recording, tiny_model_dir
):
    """A WHOLE_RECORDING row for what long-form evaluation transcribes; never trained on, never in the
    short-form scores (clean_rows)."""
    cache = open_cache(long_form_cache, model_dir=tiny_model_dir)
    whole = whole_recordings(cache.validation).with_format("numpy")
    call = f"s3://{staged_corpus.bucket}/calls/{multi_utterance_recording.path.name}"
    assert list(whole["audio_uri"]) == [call]  # one-utterance clips are scored by their windows alone
    assert call not in set(cache.train["audio_uri"]) and not len(whole_recordings(cache.train))
    (row,) = whole
    speech = [u for u in multi_utterance_recording.utterances if u.text]
    assert [u["text"] for u in row["utterances"]] == [u.text for u in speech]
    assert row["text"] == " ".join(u.text for u in speech) and len(row["labels"]) == 0
    for kept, annotated in zip(row["utterances"], speech, strict=True):
        assert abs(kept["start"] - annotated.start) < 1e-3 and abs(kept["end"] - annotated.end) < 1e-3
    samples = len(multi_utterance_recording.samples)
    assert row["end"] == pytest.approx(samples / 16_000) and row["start"] == 0
    assert len(row["input_features"]) == math.ceil((samples + 200) / 160)  # every frame that holds audio
    assert not len(whole_recordings(clean_rows(cache.validation)))
    assert json.loads((long_form_cache / "prepare_report.json").read_text())["whole_recordings"] == 1


def test_reloaded_padded_features_equal_the_feature_extractor_on_padded_audio(
    prepared_cache, tiny_model_dir, speech_clips, multi_utterance_recording
):
    extractor = WhisperFeatureExtractor.from_pretrained(str(tiny_model_dir))
    cache = open_cache(prepared_cache, model_dir=tiny_model_dir)
    sources = {f"clips/{clip.name}.flac": clip.paths["flac"] for clip in speech_clips}
    sources[f"calls/{multi_utterance_recording.path.name}"] = multi_utterance_recording.path
    checked = set()
    for dataset in (cache.train, cache.validation):
        for row in dataset.with_format("numpy"):
            key = row["audio_uri"].split("/", 3)[3]
            if row["augmentation"] or key not in sources:
                continue
            audio = cut(decode_audio(sources[key].read_bytes()), float(row["start"]), float(row["end"]))
            expected = extractor(audio, sampling_rate=16_000, return_tensors="np").input_features[0]
            padded = pad_features(row["input_features"], float(row["pad_value"]))
            assert padded.shape == expected.shape == (80, 3000)
            assert np.abs(padded - expected).max() <= 1e-3
            checked.add(key)
    assert checked == set(sources)


def test_labels_carry_the_prefix_and_timestamps_and_decode_back_to_the_text(prepared_cache, tiny_model_dir):
    tokenizer = WhisperTokenizerFast.from_pretrained(str(tiny_model_dir))
    prefix = tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|vi|>", "<|transcribe|>", "<|0.00|>"]
    )
    no_speech = tokenizer.convert_tokens_to_ids(["<|startoftranscript|>", "<|nocaptions|>", "<|endoftext|>"])
    cache = open_cache(prepared_cache)
    for row in cache.validation.select_columns(["labels", "text", "start", "end"]):
        if not row["text"]:
            assert row["labels"] == no_speech
            continue
        assert row["labels"][:4] == prefix and row["labels"][-1] == tokenizer.eos_token_id
        # the last segment ends where the window does: the nearest step of the 0.02 s grid (float sums of
        # the region times may land a hair past the half step)
        last = float(tokenizer.convert_ids_to_tokens(row["labels"][-2]).strip("<|>"))
        assert abs(last - (row["end"] - row["start"])) <= TIME_PRECISION / 2 + 1e-9
        assert tokenizer.decode(row["labels"], skip_special_tokens=True).strip() == row["text"]
        assert unicodedata.is_normalized("NFC", row["text"])


def test_rerun_is_a_no_op_and_force_or_a_changed_setting_rebuilds(
    prepared_cache, staged_corpus, tiny_model_dir, tmp_path, monkeypatch
):
    root = _copy(prepared_cache, tmp_path)
    before = cache_digest(root)
    args = prepare_arguments(staged_corpus, tiny_model_dir, root)
    (root / ".staging").mkdir()  # as a build stopped between its report and its clean-up leaves it
    (root / ".staging" / "0123.json").write_text('{"rows": 0}')

    def load_tokenizer(*_):
        pytest.fail("the no-op loaded the tokenizer")

    with monkeypatch.context() as patched:  # a current cache is known before the tokenizer loads
        patched.setattr(prepare.LabelEncoder, "from_pretrained", load_tokenizer)
        again = run_prepare(args, AugmentationSettings(), environ=staged_corpus.env)
    assert again.current and cache_digest(root) == before
    assert not (root / ".staging").exists()

    changed = run_prepare(
        prepare_arguments(staged_corpus, tiny_model_dir, root, augment_copies=2),
        AugmentationSettings(),
        environ=staged_corpus.env,
    )
    assert not changed.current
    report = changed.report
    assert report["examples"]["train"] == 3 * report["windows"]["train"]
    # The validation recordings' work does not depend on augment_copies: reused, not recomputed.
    assert report["recordings"]["reused"] > 0
    assert report["recordings"]["computed"] + report["recordings"]["reused"] == report["recordings"]["total"]

    forced = run_prepare(
        prepare_arguments(staged_corpus, tiny_model_dir, root, augment_copies=2, force=True),
        AugmentationSettings(),
        environ=staged_corpus.env,
    )
    assert forced.report["recordings"]["computed"] == forced.report["recordings"]["total"]

    one_region = run_prepare(  # windows of one region each: another cache, not "current"
        prepare_arguments(staged_corpus, tiny_model_dir, root, augment_copies=2, max_window_regions=1),
        AugmentationSettings(),
        environ=staged_corpus.env,
    )
    assert not one_region.current and one_region.report["windows"] != forced.report["windows"]


def test_a_rerun_lists_what_the_previous_run_listed_while_the_export_is_parsed(s3_bucket, tmp_path):
    export = LabelStudioExport(seed=3)
    for index in range(LIST_MIN_OBJECTS + 2):  # enough to be listed, not asked one by one
        export.add_task(s3_bucket.put(f"scan/{index:03d}.wav", b"RIFF"), [Utterance("xin chào", 0.0, 1.0)])
    path = tmp_path / "export.json"
    path.write_text(export.to_json(), encoding="utf-8")

    def gather(previous_report, allowed_buckets=()):
        """The inputs, and each S3 call made with the thread that made it."""
        s3 = S3Access(S3Settings.from_env(s3_bucket.env))
        calls: list[tuple[str, str]] = []
        s3.client().meta.events.register(
            "before-call.s3", lambda model, **_: calls.append((model.name, threading.current_thread().name))
        )
        args = prepare.PrepareArguments(annotations=str(path), allowed_buckets=list(allowed_buckets))
        scanned = prepare._scan_ahead(previous_report, s3, args.allowed_buckets)
        access = AudioAccess(s3, HttpAccess(HttpSettings()), allowed_buckets=tuple(allowed_buckets))
        return prepare._gather_inputs(args, access, None, scanned), calls

    first, calls = gather(None)
    assert calls == [("HeadBucket", "MainThread"), ("ListObjectsV2", "MainThread")]
    report = {"listings": [asdict(listing) for listing in listings(list(first.refs.values()))]}
    again, calls = gather(report)
    assert calls == [("ListObjectsV2", "scan-ahead")]  # a bucket that answered the listing needs no HEAD
    assert again.infos == first.infos and again.annotations_sha256 == first.annotations_sha256
    # A bucket the user no longer allows is not even listed.
    elsewhere, calls = gather(report, allowed_buckets=["another-bucket"])
    assert calls == [] and not elsewhere.infos


def test_new_recordings_cost_only_their_own_work_and_do_not_move_old_ones(
    s3_tls_server, staged_corpus, speech_clips, prepared_cache, tiny_model_dir, tmp_path
):
    root = _copy(prepared_cache, tmp_path)
    old = open_cache(root)
    old_split = {uri: "train" for uri in old.train["audio_uri"]}
    old_split |= {uri: "validation" for uri in old.validation["audio_uri"]}
    grown = LabelStudioExport(seed=2)
    grown.tasks = json.loads(staged_corpus.export.to_json())
    for index, clip in enumerate(speech_clips[:3]):
        key = f"new/{index}.flac"
        s3_tls_server.upload_file(staged_corpus.bucket, key, clip.paths["flac"])
        grown.add_task(f"s3://{staged_corpus.bucket}/{key}", [Utterance(clip.text, 0.0, clip.duration)])
    s3_tls_server.put_bytes(staged_corpus.bucket, "exports/grown.json", grown.to_json().encode())
    args = prepare_arguments(staged_corpus, tiny_model_dir, root)
    args.annotations = f"s3://{staged_corpus.bucket}/exports/grown.json"
    summary = run_prepare(args, AugmentationSettings(), environ=staged_corpus.env)
    recordings = summary.report["recordings"]
    assert (recordings["computed"], recordings["reused"]) == (3, len(old_split))
    new = open_cache(root)
    for split, dataset in (("train", new.train), ("validation", new.validation)):
        for uri in set(dataset["audio_uri"]):
            assert old_split.get(uri, split) == split
    # Rows reused from the previous cache are written exactly as rows computed afresh.
    fresh = prepare_arguments(staged_corpus, tiny_model_dir, tmp_path / "fresh")
    fresh.annotations = args.annotations
    run_prepare(fresh, AugmentationSettings(), environ=staged_corpus.env)
    assert cache_digest(root) == cache_digest(tmp_path / "fresh")


def test_a_model_folder_needs_its_tokenizer_and_extractor_settings_in_either_layout(
    transformers5_model_dir, tmp_path
):
    prepare._check_model_dir(transformers5_model_dir)  # processor_config.json, no preprocessor_config.json
    with pytest.raises(ModelError, match=r"missing preprocessor_config\.json or processor_config\.json, tok"):
        prepare._check_model_dir(tmp_path)


def test_a_second_run_on_the_same_folder_is_refused_clearly(prepared_cache, staged_corpus, tiny_model_dir):
    args = prepare_arguments(staged_corpus, tiny_model_dir, prepared_cache)
    with exclusive_lock(prepared_cache), pytest.raises(CacheError, match=r"another prepare_data\.py run"):
        run_prepare(args, AugmentationSettings(), environ=staged_corpus.env)


@pytest.mark.e2e
def test_kill_9_in_three_phases_then_rerun_gives_the_identical_cache(
    prepared_cache, staged_corpus, tiny_model_dir, tmp_path
):
    output_dir = tmp_path / "processed_data"
    env = {**os.environ, **staged_corpus.env}
    command = prepare_command(staged_corpus, tiny_model_dir, output_dir)
    rng = random.Random(1)
    plan = [("features", rng.uniform(0.0, 0.3)), ("shards", 0.0), ("finalize", rng.uniform(0.0, 0.003))]
    hits = [kill_in_phase(command, env, output_dir, target, delay) for target, delay in plan]
    assert "completed" not in hits, hits
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert cache_digest(output_dir) == cache_digest(prepared_cache)
    assert not (output_dir / ".staging").exists()


def _edge_case_corpus(server, bucket: str, model_dir: Path) -> tuple[LabelStudioExport, dict[str, list[str]]]:
    """One task per case of the issue; returns the export and the texts each kept recording must have."""
    server.create_bucket(bucket)
    say = {text: synthesize(text) for text in ("Một hai ba.", "Bốn năm sáu.", "Bảy tám chín mười.")}
    one, two, three = say
    export = LabelStudioExport(seed=5)
    expected: dict[str, list[str]] = {}

    def upload(name: str, parts: list[Part]) -> tuple[str, list[Utterance]]:
        samples, utterances = compose(parts)
        server.put_bytes(bucket, name, encode_audio(samples, 16_000, "flac"))
        return f"s3://{bucket}/{name}", utterances

    uri, regions = upload("two_regions.flac", [Part(say[one], one), Part(say[two], two)])
    export.add_task(uri, regions)
    expected[uri] = [one, two]

    uri, regions = upload("noise.flac", [Part(say[one], one), Part(say[two] * 0.0 + 0.01, label=NOISE)])
    export.add_task(uri, regions)
    expected[uri] = [one]

    uri, regions = upload("several.flac", [Part(say[three], three)])
    task = export.add_task(uri, [Utterance("bản nháp", regions[0].start, regions[0].end)])
    export.add_annotation(task, regions)
    expected[uri] = [three]

    uri, regions = upload("cancelled.flac", [Part(say[one], one)])
    export.add_annotation(export.add_task(uri, None), regions, cancelled=True)

    uri, regions = upload("predicted.flac", [Part(say[one], one)])
    export.add_prediction(export.add_task(uri, None), regions)

    uri, regions = upload(
        "list_text.flac", [Part(say[two], f"{two.split()[0]}\n{' '.join(two.split()[1:])}")]
    )
    export.add_task(uri, regions)
    expected[uri] = [two]

    uri, regions = upload("empty_text.flac", [Part(say[one], one), Part(say[two], "")])
    export.add_task(uri, regions)
    expected[uri] = [one]

    uri, regions = upload("only_noise.flac", [Part(say[two] * 0.0 + 0.01, label=NOISE)])
    export.add_task(uri, regions)  # a no-speech example, or a counted skip with --no-noise-examples

    long_parts = [Part(say[text], text) for text in [one, two, three] * 8]
    uri, regions = upload("long.flac", long_parts)
    export.add_task(uri, regions)
    expected[uri] = [one, two, three] * 8

    export.add_task(f"s3://{bucket}/missing.flac", [Utterance(one, 0.0, 1.0)])

    uri, regions = upload("nfd.flac", [Part(say[three], unicodedata.normalize("NFD", three))])
    export.add_task(uri, regions)
    expected[uri] = [three]
    server.put_bytes(bucket, "export.json", export.to_json().encode())
    return export, expected


def test_export_cases_keep_exact_texts_and_count_every_skip(s3_tls_server, tiny_model_dir, tmp_path):
    bucket = "edge-cases"
    _, expected = _edge_case_corpus(s3_tls_server, bucket, tiny_model_dir)
    env = s3_tls_server.env(bucket)
    args = prepare_arguments(
        type("C", (), {"annotations_uri": f"s3://{bucket}/export.json"})(),
        tiny_model_dir,
        tmp_path / "cache",
        augment_copies=0,
        val_fraction=0.0,
        max_skip_fraction=0.5,
    )
    report = run_prepare(args, AugmentationSettings(), environ=env).report
    assert report["skips"]["by_reason"] == {
        "empty_text": 1,
        "excluded_label": 2,
        "missing_object": 1,
        "only_cancelled_annotations": 1,
        "only_predictions": 1,
    }
    # both noise regions are no-speech examples: the one beside speech, and the recording of noise alone
    assert report["no_speech_examples"] == {"train": 2, "validation": 0}
    no_noise = replace(args, output_dir=str(tmp_path / "no-noise"), noise_examples=False)
    quiet = run_prepare(no_noise, AugmentationSettings(), environ=env).report
    assert quiet["no_speech_examples"] == {"train": 0, "validation": 0}
    assert quiet["skips"]["by_reason"]["no_transcribed_speech"] == 1
    items = {(item["reason"], item["audio_uri"]) for item in report["skips"]["items"]}
    assert ("missing_object", f"s3://{bucket}/missing.flac") in items
    cache = open_cache(tmp_path / "cache")
    rows = cache.train.select_columns(["audio_uri", "text", "start", "end"]).to_list()
    kept: dict[str, list[str]] = {}
    for row in rows:
        assert row["end"] - row["start"] <= 30.0
        if row["text"]:  # no-speech windows (the noise alone) have none
            kept.setdefault(row["audio_uri"], []).append(row["text"])
    assert {uri: " ".join(texts) for uri, texts in kept.items()} == {
        uri: " ".join(texts) for uri, texts in expected.items()
    }
    assert len(kept[f"s3://{bucket}/long.flac"]) >= 2  # over 30 s: split at region boundaries


def test_too_many_failed_recordings_fail_the_run_and_keep_the_previous_cache(
    s3_tls_server, tiny_model_dir, tmp_path
):
    bucket = "mostly-missing"
    s3_tls_server.create_bucket(bucket)
    export = LabelStudioExport()
    for index in range(4):
        export.add_task(f"s3://{bucket}/missing-{index}.flac", [Utterance("Một hai ba.", 0.0, 1.0)])
    s3_tls_server.put_bytes(bucket, "export.json", export.to_json().encode())
    args = prepare_arguments(
        type("C", (), {"annotations_uri": f"s3://{bucket}/export.json"})(), tiny_model_dir, tmp_path / "c"
    )
    with pytest.raises(TooManyFailures, match="missing_object"):
        run_prepare(args, AugmentationSettings(), environ=s3_tls_server.env(bucket))
    assert not (tmp_path / "c" / "prepare_report.json").exists()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "case, fragment",
    [
        ("no_model", "--model"),
        ("no_annotations", "--annotations"),
        ("no_ca_bundle", "AWS_CA_BUNDLE"),
        ("unknown_bucket", "no-such-bucket"),
        ("bad_config_key", "augment_copy"),
        ("project_and_annotations", "name two exports"),
    ],
)
def test_user_errors_are_one_line_exit_2_before_heavy_work(
    case, fragment, staged_corpus, tiny_model_dir, tmp_path
):
    env = {**os.environ, **staged_corpus.env}
    command = prepare_command(staged_corpus, tiny_model_dir, tmp_path / "out")
    if case == "no_model":
        command[command.index("--model") + 1] = str(tmp_path / "nowhere")
    elif case == "no_annotations":
        command[command.index("--annotations") + 1] = str(tmp_path / "missing.json")
    elif case == "no_ca_bundle":
        env.pop("AWS_CA_BUNDLE")
    elif case == "unknown_bucket":
        command[command.index("--annotations") + 1] = "s3://no-such-bucket/export.json"
    elif case == "bad_config_key":
        config = tmp_path / "prepare.yaml"
        config.write_text("augment_copy: 2\n")
        command.insert(2, str(config))
    elif case == "project_and_annotations":
        command += ["--label-studio-url", "http://127.0.0.1:9", "--project", "3"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "prepare_report.json").exists()
