"""The training loop: start-up and resume, batches, one optimizer step, logging."""
