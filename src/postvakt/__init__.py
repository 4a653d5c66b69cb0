"""postvakt: a small mail server that is never an open relay and explains every refusal."""

__version__ = "0.1.0"
