"""Fixtures for the doctor and relay-test tests: private Postfix instances
(see tests/postfix_support.py), one careful, one an open relay."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from postfix_support import CAREFUL_DOMAIN, OPEN_DOMAIN, PostfixInstance, postfix_usable


def _start(domain: str, mynetworks: str) -> Iterator[PostfixInstance]:
    reason = postfix_usable()
    if reason:
        pytest.skip(reason)
    inst = PostfixInstance(domain, mynetworks)
    try:
        inst.start()
    except RuntimeError as e:
        inst.stop()
        # Postfix is installed and we are root: not starting is a failure, never a skip.
        pytest.fail(f"the private Postfix instance did not start: {e}")
    try:
        yield inst
    finally:
        inst.stop()


@pytest.fixture(scope="session")
def postfix_careful() -> Iterator[PostfixInstance]:
    """A careful provider: only 127.0.0.1 may relay; 127.0.0.2 is a stranger."""
    yield from _start(CAREFUL_DOMAIN, "127.0.0.1/32")


@pytest.fixture(scope="session")
def postfix_open() -> Iterator[PostfixInstance]:
    """The classic accident: the whole 127/8 (think: a Docker gateway) counts as own network."""
    yield from _start(OPEN_DOMAIN, "127.0.0.0/8")
