"""postvakt.web: mail programs that set themselves up, and a page that reads the error.

- mailconfig.py: the settings a mail program should use (from the live config
  and the ports the listeners bound) and the documents that carry them:
  Thunderbird autoconfig, Outlook Autodiscover (POX), an Apple profile.
- pages.py: the "Why can't I send?" page, in the words of diagnose/catalogue.py.
- app.py: the thin aiohttp adapter (routes, forms, CSRF, rate limits);
  guard.py: slow and greedy clients get a 408/429 before aiohttp sees them.

Imports point down: web -> diagnose, policy, config; nothing below imports web.
"""
