"""Whisper's fixed audio and decoder geometry, named once and derived from each other; and the few names
every command shares (precisions, adapter files). Importing this loads nothing: transcribe and
pre-annotate with a CTranslate2 export (and their --help and argument errors) never import torch, and start
in a second or two instead of the ten that importing transformers' models takes on 2 CPU cores."""

SAMPLE_RATE = 16_000  # Hz: Whisper's input rate
N_FFT = 400  # samples in one STFT window (25 ms)
HOP_LENGTH = 160  # samples between frames (10 ms)
CHUNK_SECONDS = 30  # Whisper sees at most this many seconds
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480,000 samples in one padded input
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3,000 log-mel frames in one padded input
MAX_TARGET_POSITIONS = 448  # decoder positions, special tokens included (all Whisper sizes)
MAX_PROMPT_TOKENS = MAX_TARGET_POSITIONS // 2  # previous text a window may be conditioned on
TIME_PRECISION = 0.02  # seconds between two timestamp tokens
N_TIMESTAMPS = round(CHUNK_SECONDS / TIME_PRECISION) + 1
TIMESTAMP_TOKENS = tuple(f"<|{index * TIME_PRECISION:.2f}|>" for index in range(N_TIMESTAMPS))  # <|0.00|>...
LOG_MEL_DYNAMIC_RANGE = 8.0  # Whisper clamps log10-mel to (max - 8) over the whole padded input
LOG_MEL_FLOOR = 1e-10  # mel power floor before log10

PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # --precision choices (train, evaluate, transcribe, ...)
ADAPTER_CONFIG = "adapter_config.json"  # peft's files of a saved adapter
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_PICKLE = "adapter_model.bin"
