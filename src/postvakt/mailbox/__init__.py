"""postvakt.mailbox."""
