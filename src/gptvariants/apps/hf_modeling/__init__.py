"""Modeling code that `gptv export` ships inside a Hugging Face folder (loaded with ``trust_remote_code=True``).

``modeling_gptvariants.py`` imports only torch and transformers, never gptvariants, so an exported
folder works where gptvariants is not installed. It is copied into the folder as it is.
"""

from pathlib import Path

MODELING_FILE = Path(__file__).with_name("modeling_gptvariants.py")
