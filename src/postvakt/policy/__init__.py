"""postvakt.policy."""
