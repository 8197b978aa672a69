"""Run folders on disk: ``run.RunFolder`` (what a run holds), checksummed checkpoints, metrics.jsonl
(``records``), integrity, one writer per run."""
