"""Loading Whisper safely, attaching/continuing LoRA adapters, and what they save."""

import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

from tests.fixtures.training import LORA
from whisper_pipeline.errors import ConfigError, ModelError
from whisper_pipeline.train.modeling import (
    DEFAULT_TARGET_MODULES,
    check_quantization,
    configure_generation,
    configure_spec_augment,
    continue_adapter,
    load_base_model,
    load_trained,
    native_bf16,
    new_adapter,
    prepare_for_training,
    resolve_precision,
    save_adapter,
    training_precision,
)

# torch.cpu.get_capabilities() of three CPUs: Sapphire Rapids (AMX), Zen 4 (AVX512-BF16), and AVX2 only
SAPPHIRE_RAPIDS = {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True}
ZEN4 = {"avx2": True, "avx512_f": True, "avx512_bf16": True, "amx_tile": False, "amx_bf16": False}
AVX2_ONLY = {"avx2": True, "avx512_f": False, "avx512_bf16": False, "amx_tile": False, "amx_bf16": False}


@pytest.fixture
def base(tiny_model_dir):
    return load_base_model(tiny_model_dir, precision="fp32")


def _batch(model, batch_size=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, model.config.num_mel_bins, 3000, generator=generator)
    labels = torch.randint(0, 1000, (batch_size, 6), generator=generator)
    return {"input_features": features, "labels": labels}


def test_precision_is_bf16_or_fp16_on_gpus_and_fp32_on_cpu(monkeypatch):
    assert resolve_precision("auto", cuda=False) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_precision("auto", cuda=True) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_precision("auto", cuda=True) == "fp16"
    assert resolve_precision("bf16", cuda=False) == "bf16"
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", cuda=False)
    with pytest.raises(ConfigError, match="must be one of"):
        resolve_precision("fp64", cuda=False)


def test_training_on_cpu_takes_bf16_only_with_native_bf16_and_says_why():
    assert (native_bf16(SAPPHIRE_RAPIDS), native_bf16(ZEN4), native_bf16(AVX2_ONLY)) == (
        "AMX",
        "AVX512-BF16",
        None,
    )
    assert native_bf16({}) is None  # a capability torch does not report is not there
    assert training_precision("auto", cuda=False, capabilities=SAPPHIRE_RAPIDS) == (
        "bf16",
        "bf16 autocast: this CPU has AMX",
    )
    assert (
        training_precision("auto", cuda=False, capabilities=ZEN4)[1]
        == "bf16 autocast: this CPU has AVX512-BF16"
    )
    assert training_precision("auto", cuda=False, capabilities=AVX2_ONLY) == (
        "fp32",
        "fp32: this CPU has no native bf16 (AMX or AVX512-BF16)",
    )
    assert training_precision("bf16", cuda=False, capabilities=AVX2_ONLY) == (
        "bf16",
        "bf16 autocast: --precision bf16; this CPU has no native bf16 (AMX or AVX512-BF16), so it is slower "
        "than fp32",
    )
    assert (
        training_precision("bf16", cuda=False, capabilities=SAPPHIRE_RAPIDS)[1]
        == "bf16 autocast: --precision bf16"
    )
    assert training_precision("fp32", cuda=False, capabilities=SAPPHIRE_RAPIDS) == (
        "fp32",
        "fp32: --precision fp32",
    )
    # Inference keeps fp32 on CPU whatever it has: only training's bf16 autocast was measured.
    assert resolve_precision("auto", cuda=False) == "fp32"
    # Without capabilities given: this CPU's, as torch reports them (an AVX2-only CPU stays fp32).
    this_cpu = native_bf16(torch.cpu.get_capabilities())
    assert training_precision("auto", cuda=False)[0] == ("bf16" if this_cpu else "fp32")


def test_training_on_a_gpu_says_why(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert training_precision("auto", cuda=True) == ("bf16", "bf16 autocast: this GPU supports bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert training_precision("auto", cuda=True) == (
        "fp16",
        "fp16 autocast with a grad scaler: this GPU has no bf16",
    )
    assert training_precision("fp32", cuda=True) == ("fp32", "fp32: --precision fp32")


def test_quantization_needs_a_gpu_and_one_choice():
    assert check_quantization(False, False, cuda=False) is None
    with pytest.raises(ConfigError, match="--load-in-8bit needs a CUDA GPU"):
        check_quantization(True, False, cuda=False)
    with pytest.raises(ConfigError, match="exclusive"):
        check_quantization(True, True, cuda=True)


def test_pickle_only_model_is_refused_unless_allowed(tiny_model_dir, base, tmp_path):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save(base.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"only a pickle checkpoint.*--allow-pickle"):
        load_base_model(pickled, precision="fp32")
    loaded = load_base_model(pickled, precision="fp32", allow_pickle=True)
    assert torch.equal(loaded.model.encoder.conv1.weight, base.model.encoder.conv1.weight)


def test_missing_model_or_weights_are_model_errors(tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match="not a Whisper model directory"):
        load_base_model(tmp_path / "absent", precision="fp32")
    weightless = tmp_path / "weightless"
    shutil.copytree(tiny_model_dir, weightless)
    (weightless / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="has no weights"):
        load_base_model(weightless, precision="fp32")


def test_new_adapter_trains_lora_on_every_attention_projection_and_optionally_the_convolutions(base):
    model = new_adapter(base, **LORA, unfreeze_conv=True)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    lora_modules = {name.split(".lora_")[0].rsplit(".", 1)[1] for name in trainable if ".lora_" in name}
    assert lora_modules == set(DEFAULT_TARGET_MODULES)
    assert any(".encoder.layers." in name for name in trainable)
    assert any(".decoder.layers." in name for name in trainable)
    conv = {name for name in trainable if ".lora_" not in name}
    assert conv == {
        f"base_model.model.model.encoder.{conv}.modules_to_save.default.{part}"
        for conv in ("conv1", "conv2")
        for part in ("weight", "bias")
    }


def test_plain_model_is_not_given_kbit_preparation(tiny_model_dir):
    """peft #951: prepare_model_for_kbit_training on a non-quantized model upcasts it all to fp32."""
    model = load_base_model(tiny_model_dir, precision="bf16")
    prepare_for_training(model, gradient_checkpointing=True)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    adapted = new_adapter(model, **LORA, unfreeze_conv=True)
    frozen = {p.dtype for p in adapted.parameters() if not p.requires_grad}
    trained = {p.dtype for p in adapted.parameters() if p.requires_grad}
    assert (frozen, trained) == ({torch.bfloat16}, {torch.float32})


def test_reentrant_checkpointing_trains_encoder_lora_only_with_input_grads(tiny_model_dir):
    """peft #810: frozen inputs + reentrant checkpointing fail (no grad); prepared, the encoder trains."""

    def step(prepared: bool):
        model = load_base_model(tiny_model_dir, precision="fp32")
        if prepared:
            prepare_for_training(model, gradient_checkpointing=True)
        adapted = new_adapter(model, **LORA, unfreeze_conv=False)
        adapted.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
        adapted.train()
        adapted(**_batch(model)).loss.backward()
        return adapted

    with pytest.raises(RuntimeError, match="does not require grad"):
        step(prepared=False)
    adapted = step(prepared=True)
    # lora_B: with B = 0 at the start, lora_A's gradient is zero whatever happens.
    encoder = [p.grad for name, p in adapted.named_parameters() if ".lora_B" in name and ".encoder." in name]
    assert encoder
    assert all(grad is not None and grad.abs().sum() > 0 for grad in encoder)


def test_generation_is_forced_to_the_language_and_task(base, tiny_model_dir):
    configure_generation(base, language="vi", task="transcribe")
    tokenizer = WhisperProcessor.from_pretrained(str(tiny_model_dir)).tokenizer
    prompts = []
    base.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: prompts.append(kwargs["input_ids"][0].tolist()), with_kwargs=True
    )
    base.eval().generate(_batch(base, batch_size=1)["input_features"], max_length=6)
    expected = ["<|startoftranscript|>", "<|vi|>", "<|transcribe|>", "<|notimestamps|>"]
    assert tokenizer.convert_ids_to_tokens(prompts[0]) == expected
    with pytest.raises(ConfigError, match="not a language of this model"):
        configure_generation(base, language="xx", task="transcribe")
    with pytest.raises(ConfigError, match="--task must be one of"):
        configure_generation(base, language="vi", task="summarize")


def test_spec_augment_masks_training_batches_only(base):
    features = _batch(base)["input_features"]
    configure_spec_augment(base, enabled=True, mask_time_prob=0.3, mask_feature_prob=0.3)
    base.train()
    masked = base.model._mask_input_features(features.clone())
    zero_bins = (masked == 0).all(dim=2).any()
    zero_frames = (masked == 0).all(dim=1).any()
    assert zero_bins and zero_frames
    base.eval()
    assert torch.equal(base.model._mask_input_features(features.clone()), features)
    configure_spec_augment(base, enabled=False, mask_time_prob=None, mask_feature_prob=None)
    base.train()
    assert torch.equal(base.model._mask_input_features(features.clone()), features)


def _trained_adapter(base, processor, directory, *, unfreeze_conv=True):
    """An adapter with non-zero LoRA and changed convolutions, as training would leave it."""
    model = new_adapter(base, **LORA, unfreeze_conv=unfreeze_conv)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.01 * torch.randn_like(parameter))
    save_adapter(model, processor, directory)
    return model


def test_saved_convolutions_are_restored_when_continuing_and_merging(tiny_model_dir, base, tmp_path):
    processor = WhisperProcessor.from_pretrained(str(tiny_model_dir))
    base_conv = base.model.encoder.conv1.weight.detach().clone()
    trained = _trained_adapter(base, processor, tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    trained_conv = saved["base_model.model.model.encoder.conv1.weight"]
    assert not torch.equal(trained_conv, base_conv)
    assert {path.name for path in (tmp_path / "adapter").iterdir()} >= {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
    }

    continued = continue_adapter(
        load_base_model(tiny_model_dir, precision="fp32"), tmp_path / "adapter", unfreeze_conv=False
    )
    conv = continued.base_model.model.model.encoder.conv1
    assert torch.equal(conv.weight, trained_conv)
    assert conv.weight.requires_grad
    assert any(p.requires_grad for name, p in continued.named_parameters() if ".lora_B" in name)

    merged = load_trained(tiny_model_dir, tmp_path / "adapter", merge=True)
    assert torch.equal(merged.model.encoder.conv1.weight, trained_conv)
    batch = _batch(merged)
    trained.eval()
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, trained(**batch).logits, atol=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda config: setattr(config, "d_model", 2 * config.d_model), "dimensions differ"),
        (lambda config: setattr(config, "decoder_layers", config.decoder_layers + 1), "has no module"),
    ],
    ids=["d_model", "layers"],
)
def test_adapter_of_another_model_is_refused(tiny_model_dir, base, tmp_path, change, message):
    config = WhisperConfig.from_pretrained(str(tiny_model_dir))
    change(config)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=list(DEFAULT_TARGET_MODULES))
    get_peft_model(WhisperForConditionalGeneration(config), lora).save_pretrained(str(tmp_path / "foreign"))
    with pytest.raises(ModelError, match=message):
        continue_adapter(base, tmp_path / "foreign", unfreeze_conv=False)


def test_adapter_saved_as_seq2seq_lm_still_trains(tiny_model_dir, base, tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="SEQ_2_SEQ_LM")
    get_peft_model(base, lora).save_pretrained(str(tmp_path / "tutorial"))
    fresh = load_base_model(tiny_model_dir, precision="fp32")
    continued = continue_adapter(fresh, tmp_path / "tutorial", unfreeze_conv=False)
    continued(**_batch(fresh)).loss.backward()
    assert all(p.grad is not None for name, p in continued.named_parameters() if ".lora_B" in name)


def test_adapter_with_another_vocabulary_is_refused(tiny_model_dir, base, tmp_path):
    processor = WhisperProcessor.from_pretrained(str(tiny_model_dir))
    processor.tokenizer.add_tokens(["<|new-token|>"])
    _trained_adapter(base, processor, tmp_path / "adapter", unfreeze_conv=False)
    with pytest.raises(ModelError, match="another vocabulary"):
        continue_adapter(
            load_base_model(tiny_model_dir, precision="fp32"), tmp_path / "adapter", unfreeze_conv=False
        )


def test_not_an_adapter_or_pickled_adapter_is_refused(tiny_model_dir, base, tmp_path):
    with pytest.raises(ModelError, match="not a PEFT adapter directory"):
        continue_adapter(base, tmp_path, unfreeze_conv=False)
    processor = WhisperProcessor.from_pretrained(str(tiny_model_dir))
    _trained_adapter(base, processor, tmp_path / "adapter", unfreeze_conv=False)
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    torch.save(weights, tmp_path / "adapter" / "adapter_model.bin")
    fresh = load_base_model(tiny_model_dir, precision="fp32")
    with pytest.raises(ModelError, match="only a pickle checkpoint"):
        continue_adapter(fresh, tmp_path / "adapter", unfreeze_conv=False)
