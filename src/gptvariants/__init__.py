"""gptvariants: GPT language models with softmax, smoothed, Bayesian and sigmoid output layers."""
__version__ = "0.1.0"
