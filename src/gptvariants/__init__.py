"""gptvariants: GPT language models with softmax, smoothed, Bayesian and sigmoid output layers."""
__version__ = "0.1.0"


def __getattr__(name: str):
    # ``gptvariants.load`` imports torch and the model only when first used
    if name == "load":
        from .api import load

        return load
    raise AttributeError(f"module 'gptvariants' has no attribute {name!r}")
