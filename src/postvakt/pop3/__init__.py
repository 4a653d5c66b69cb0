"""postvakt.pop3."""
