"""Mail authentication: DKIM signing of what our users send; SPF, DKIM and
DMARC checks of what arrives from outside, recorded in one
`Authentication-Results:` field (RFC 8601).

Rules of the house:
- `results.py` holds the values every part speaks in and the header they
  become; it is pure (no I/O, no clock): the policy (`policy/authchecks.py`)
  decides on these values alone, so its decisions are tables in tests.
- Lookups go through the one DNS client (`postvakt.dnsclient`, `[dns]`), are
  coroutines with a lifetime, and a DNS failure that may pass is a temporary
  result (temperror), never a permanent one.
- Signing and verifying use dkimpy; RSA work runs off the event loop.
- This package imports nothing from here on purpose: importing
  `postvakt.mailauth.results` must not pull in asyncio or dnspython.
"""
