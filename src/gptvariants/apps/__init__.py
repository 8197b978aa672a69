"""Front ends: the gptv command line, the Python API, the web playground, Hugging Face export, lm-eval."""
