"""appliance: edge boxes that adapt an open GGUF model to a plant's own data.

Each box fine-tunes LoRA adapters with llama.cpp on data that never leaves it; a plant
aggregator combines their updates over MQTT. See DESIGN.md for the layout.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("appliance")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
