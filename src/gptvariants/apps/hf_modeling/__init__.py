"""Code that `gptv export` ships inside a Hugging Face folder (loaded with ``trust_remote_code=True``).

``modeling_gptvariants.py`` (the model of a non-softmax head) and ``sliding_generate.py`` (every
export's ``custom_generate/generate.py``: generation past the context) import only torch and
transformers, never gptvariants, so an exported folder works where gptvariants is not installed.
They are copied into the folder as they are.
"""

from pathlib import Path

MODELING_FILE = Path(__file__).with_name("modeling_gptvariants.py")
GENERATE_FILE = Path(__file__).with_name("sliding_generate.py")  # every export's custom_generate/generate.py
