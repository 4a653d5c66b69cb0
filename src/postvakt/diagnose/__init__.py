"""postvakt.diagnose: tools that explain mail errors to the people who meet them.

- `explain` (explain.py): the admin's offline replay of the relay policy.
- `doctor` (doctor.py): probes any SMTP server like a careful mail client and
  names the case; `--explain-error` (errortext.py) reads an error text offline.
- `relaytest` (relaytest.py): the open-relay battery against a server you run.

The doctor and the relay test share a probe-only SMTP/POP3 client (client.py),
one reply classifier (classify.py) and one catalogue of words (catalogue.py).
"""
