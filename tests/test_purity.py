"""The pure modules (protocol cores, policy, address parser, retry math) do no I/O.

Checked on the source: every `import x` / `from x import` in these files,
including ones nested in functions, must stay clear of the modules that
reach sockets, files, clocks, threads or processes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "postvakt"
PURE = [
    "smtp",
    "pop3",
    "policy",
    "address.py",
    "net.py",
    "proxyproto.py",
    "queue/schedule.py",
    "mailauth/results.py",
    "mailauth/headers.py",
    "web/mailconfig.py",
    "web/pages.py",
]
FORBIDDEN = {"asyncio", "socket", "ssl", "os", "time", "subprocess", "threading", "sqlite3"}


def pure_files() -> list[Path]:
    out: list[Path] = []
    for name in PURE:
        path = SRC / name
        if path.is_dir():
            out.extend(sorted(path.rglob("*.py")))
        elif path.exists():
            out.append(path)
    return out


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            # `from os import path` is os; `from x import os` would be caught by x's own check.
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            for arg in node.args[:1]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    names.add(arg.value)
    return names


def test_there_are_pure_files_to_check() -> None:
    assert any(p.name == "address.py" for p in pure_files())


@pytest.mark.parametrize("path", pure_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_pure_module_imports_no_io(path: Path) -> None:
    bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN)
    assert not bad, f"{path.relative_to(SRC)} imports {', '.join(bad)}"


def test_checker_catches_forbidden_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os.path\nfrom time import monotonic\ndef f():\n    import socket\n")
    assert {m.split(".")[0] for m in imported_modules(sample)} >= {"os", "time", "socket"}


def _all_modules() -> list[Path]:
    # `python -m postvakt` (__main__.py) is the command line's entry, as the console script is.
    above = ("cli", "__main__.py")
    return sorted(p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in above)


@pytest.mark.parametrize("path", _all_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_nothing_below_the_cli_imports_it(path: Path) -> None:
    """Layering: commands sit on top (cli -> server/web -> queue, policy, ...), never below."""
    bad = sorted(
        m for m in imported_modules(path) if m == "postvakt.cli" or m.startswith("postvakt.cli.")
    )
    assert not bad, (
        f"{path.relative_to(SRC)} imports {', '.join(bad)}: only postvakt/cli/ may import "
        "the command package"
    )
