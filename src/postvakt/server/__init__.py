"""postvakt.server."""
