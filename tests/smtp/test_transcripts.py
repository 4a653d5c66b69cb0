"""Every transcript, run three ways: one chunk, byte by byte, random splits."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smtp_harness import byte_by_byte, one_chunk, run, split_at
from smtp_harness import settings as make_settings
from smtp_transcripts import OPTIONS, TRANSCRIPTS

NAMES = sorted(TRANSCRIPTS)


def _config(name: str):  # noqa: ANN202
    return make_settings(**OPTIONS.get(name, {}))


@pytest.mark.parametrize("name", NAMES)
def test_transcript_one_chunk(name: str) -> None:
    run(TRANSCRIPTS[name], one_chunk, _config(name))


@pytest.mark.parametrize("name", NAMES)
def test_transcript_byte_by_byte(name: str) -> None:
    run(TRANSCRIPTS[name], byte_by_byte, _config(name))


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(points=st.lists(st.integers(min_value=0, max_value=4000), max_size=30))
def test_transcript_random_splits(name: str, points: list[int]) -> None:
    run(TRANSCRIPTS[name], split_at(points), _config(name))
