"""postvakt.smtp."""
