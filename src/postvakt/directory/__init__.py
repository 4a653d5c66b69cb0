"""postvakt.directory."""
