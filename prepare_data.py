#!/usr/bin/env python
"""Stage 1: Label Studio JSON export + S3 audio -> Whisper feature cache in processed_data/.

    python prepare_data.py [CONFIG.yaml] [--annotations export.json] [--output-dir processed_data] ...

Run with --help for every setting. S3 settings come from the environment or .env.
"""

if __name__ == "__main__":
    # Imported here, not above: each feature worker process imports this script again (multiprocessing
    # prepares every child so), and should load only the lean whisper_pipeline.prepare.worker, not the
    # whole stage.
    # The workers' fork server first, so that its imports run on another core while this process imports
    # the stage and reads its inputs (see worker_server.py).
    from whisper_pipeline.prepare.fork_server import worker_server_for_command

    with worker_server_for_command():
        from whisper_pipeline.errors import exit_without_collecting
        from whisper_pipeline.prepare.run import main

        code = main()
    exit_without_collecting(code)
