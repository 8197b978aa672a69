"""Generation: the decoding policy, continuous batching, context windows, sampling filters."""
