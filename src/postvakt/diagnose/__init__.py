"""postvakt.diagnose."""
