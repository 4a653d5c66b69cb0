"""postvakt.delivery."""
