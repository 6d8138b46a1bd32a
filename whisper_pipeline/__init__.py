"""whisper-pipeline: Label Studio export + S3 audio -> a LoRA-fine-tuned Whisper."""

__version__ = "0.1.0"
