"""The two stages' commands, as prepare_data.py, train_model.py and the console scripts whisper-prepare and
whisper-train (pyproject.toml) run them. Imports nothing at the top: see `prepare`."""

from __future__ import annotations

from typing import NoReturn


def prepare() -> NoReturn:
    """Stage 1. The workers' fork server first, so that its imports run on another core while this process
    imports the stage and reads its inputs (see fork_server.py); each feature worker process imports the
    main module again, and should load only the lean whisper_pipeline.prepare.worker, not the whole stage."""
    from whisper_pipeline.prepare.fork_server import worker_server_for_command

    with worker_server_for_command():
        from whisper_pipeline.errors import exit_without_collecting
        from whisper_pipeline.prepare.run import main

        code = main()
    exit_without_collecting(code)


def train() -> NoReturn:
    """Stage 2 (one process, or each of torchrun's)."""
    from whisper_pipeline.errors import exit_without_collecting
    from whisper_pipeline.train.run import main

    exit_without_collecting(main())
