"""gffs — the GloFlow image filesystem."""

__version__ = "0.1.0"
