"""postvakt.auth."""
