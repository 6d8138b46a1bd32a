#!/usr/bin/env python
"""Stage 1: Label Studio JSON export + S3 audio -> Whisper feature cache in processed_data/.

    python prepare_data.py [CONFIG.yaml] [--annotations export.json] [--output-dir processed_data] ...
    (installed: whisper-prepare ...)

Run with --help for every setting. S3 settings come from the environment or .env.
"""

if __name__ == "__main__":
    # Imported here, not above: each feature worker process imports this script again (multiprocessing
    # prepares every child so), and should load only the lean worker module (see commands.prepare).
    from whisper_pipeline.commands import prepare

    prepare()
