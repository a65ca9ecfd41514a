"""hf_prospector: find the instruction-tuning rows worth training on, with a small language model."""

__version__ = "0.2.0"
