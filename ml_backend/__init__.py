"""Label Studio ML backend for explanatory interactive learning."""

__version__ = "0.1.0"
