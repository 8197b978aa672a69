"""Text to token streams: tokenizers, gptv prepare, memmapped datasets, the synthetic language, eval sources."""
