#!/usr/bin/env python
"""Stage 2: the feature cache in processed_data/ -> a LoRA adapter for Whisper in outputs/adapter/.

    python train_model.py [CONFIG.yaml] [--model ./model] [--data-dir processed_data] [--output-dir outputs]
    torchrun --nproc-per-node N train_model.py ...    (or: accelerate launch train_model.py ...)
    (installed: whisper-train ...)

Run with --help for every setting (every Seq2SeqTrainingArguments flag works too).
"""

if __name__ == "__main__":
    from whisper_pipeline.commands import train

    train()
