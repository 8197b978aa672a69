"""Run folders on disk: checksummed checkpoints, integrity, one writer per run."""
