"""postvakt.queue."""
