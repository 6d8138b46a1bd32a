"""The cache's Arrow schemas and its builder, on their own (whole builds: test_prepare.py)."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pytest

from whisper_pipeline.cache import (
    SHARD_SCHEMA,
    SPLITS,
    CacheBuilder,
    CacheLayout,
    cache_features,
    load_split,
    processor_fingerprint,
    read_report,
)


@pytest.mark.parametrize("num_mel_bins", [80, 128])
def test_the_shard_schema_is_the_cache_schema_in_storage_types(num_mel_bins):
    """The workers encode with SHARD_SCHEMA (pyarrow alone); the cache's columns are the same ones, the
    features as datasets' Array2D around the same storage."""
    cache_schema = cache_features(num_mel_bins).arrow_schema
    storage = pa.schema(
        pa.field(field.name, getattr(field.type, "storage_type", field.type), field.nullable)
        for field in cache_schema
    )
    assert storage.equals(SHARD_SCHEMA)
    assert cache_features(num_mel_bins)["input_features"].shape == (None, num_mel_bins)


def test_a_build_with_no_rows_swaps_in_two_empty_loadable_splits(tmp_path):
    """A split's file is opened on its first rows; one that gets none is still written when closed."""
    layout = CacheLayout(tmp_path / "cache")
    with CacheBuilder(layout, 80) as cache:
        report = {"cache_bytes": cache.close_splits({})}
        cache.swap_in(report)
    assert read_report(layout.root) == report
    for split in SPLITS:
        dataset = load_split(layout.root, split)
        assert len(dataset) == 0
        assert dataset.features == cache_features(80)
    assert not (layout.root / ".build").exists()


def test_leaving_without_a_swap_leaves_no_build_behind(tmp_path):
    layout = CacheLayout(tmp_path / "cache")
    with pytest.raises(RuntimeError), CacheBuilder(layout, 80):
        assert (layout.root / ".build").is_dir()
        raise RuntimeError("stopped")
    assert not (layout.root / ".build").exists()
    assert read_report(layout.root) is None


def test_a_transformers5_processor_config_is_in_the_processor_fingerprint(transformers5_model_dir, tmp_path):
    """It holds the feature extractor there (no preprocessor_config.json): changing it changes the cache."""
    model = shutil.copytree(transformers5_model_dir, tmp_path / "model")
    before = processor_fingerprint(model)
    config = json.loads((model / "processor_config.json").read_text(encoding="utf-8"))
    config["feature_extractor"]["feature_size"] = 128
    (model / "processor_config.json").write_text(json.dumps(config), encoding="utf-8")
    assert processor_fingerprint(model) != before
