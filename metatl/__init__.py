"""metatl: transfer learning, meta-learning and few-shot adaptation for PyTorch."""

__version__ = "0.1.0"
