"""clip-m2df: CLIP-M2DF few-shot action recognition on Hugging Face Transformers."""

__version__ = "0.1.0"
