"""`[metrics]`, `[log]` and `[limits] ipv6_prefix`: defaults, values, and errors naming the key."""

from __future__ import annotations

import pytest

from postvakt import config
from postvakt.config import ConfigError, HostPort


def test_metrics_off_and_text_logs_by_default() -> None:
    cfg = config.loads('hostname = "mx.example.test"')
    assert cfg.metrics.listen is None
    assert cfg.log.format == "text"


def test_metrics_listen_and_json_logs() -> None:
    cfg = config.loads('[metrics]\nlisten = "127.0.0.1:9154"\n[log]\nformat = "json"\n')
    assert cfg.metrics.listen == HostPort("127.0.0.1", 9154)
    assert cfg.log.format == "json"
    v6 = config.loads('[metrics]\nlisten = "[::1]:9154"\n')
    assert v6.metrics.listen == HostPort("::1", 9154)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ('[metrics]\nlisten = "9154"\n', "[metrics] listen", "has no port"),
        ("[metrics]\nport = 9154\n", "[metrics] port", "unknown"),
        ('[log]\nformat = "xml"\n', "[log] format", "'xml' is not one of text, json"),
        ('[log]\nlevel = "debug"\n', "[log] level", "unknown"),
    ],
)
def test_errors_name_the_key(text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        config.loads(text, source="t.toml")
    assert e.value.key == key
    assert reason in str(e.value)
