"""postvakt.grants."""
