"""gemma-cli: run Google's Gemma 4 models locally through llama.cpp."""

__version__ = "0.1.0"
