"""slotkeeper's default model server: Open Inference Protocol v2 over HTTP."""

__version__ = "0.1.0"
