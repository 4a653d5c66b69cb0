"""The pure modules (protocol cores, policy, address parser, retry math) do no I/O.

Checked on the source: every `import x` / `from x import` in these files,
including ones nested in functions, must stay clear of the modules that
reach sockets, files, clocks, threads or processes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
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


# ---------------------------------------------------------------- layering
#
# The rules of docs/architecture.md, checked on the source. Every import
# counts: at the top, inside a function (where an import hides a cycle from
# a reader, not from the design) and under `if TYPE_CHECKING:`.


@dataclass(frozen=True)
class Import:
    module: str  # absolute (a relative import resolved)
    names: tuple[str, ...]  # `from module import names`; () for `import module`
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(Import(alias.name, (), node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            out.append(Import(module, tuple(a.name for a in node.names), node.lineno))
    return out


# ------------------------------------------------------------ no cycles

# Edges a cycle may still run through, each until its fix lands; the test
# fails once an edge is gone, so that the exception is deleted with it.
KNOWN_CYCLE_EDGES: list[tuple[str, str]] = []  # none left


def module_graph(root: Path) -> dict[str, dict[str, list[int]]]:
    """module -> {module of this tree it imports: [lines]}."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, list[int]]] = {}
    for name, path in files.items():
        edges = graph.setdefault(name, {})
        for imp in imports_of(path, root):
            # `from a.b import c` imports the module a.b.c when there is one, else a.b.
            targets = [f"{imp.module}.{n}" for n in imp.names if f"{imp.module}.{n}" in files]
            if len(targets) < len(imp.names) or not imp.names:
                targets.append(imp.module)
            for target in targets:
                while target not in files and "." in target:
                    target = target.rpartition(".")[0]
                if target in files and target != name:
                    edges.setdefault(target, []).append(imp.line)
    return graph


def cycles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycle_report(graph: dict[str, dict[str, list[int]]], known: list[tuple[str, str]]) -> str:
    """'' when the graph, less the known edges, has no cycle; else what to fix, edge by edge."""
    pruned = {v: {w: ls for w, ls in ws.items() if (v, w) not in known} for v, ws in graph.items()}
    lines = []
    for component in cycles(pruned):
        lines.append("rule 'no import cycle in src/': " + " <-> ".join(component))
        for v in component:
            for w, at in sorted(pruned[v].items()):
                if w in component:
                    lines.append(f"    {v} (line {', '.join(map(str, at))}) imports {w}")
    return "\n".join(lines)


def test_no_import_cycle() -> None:
    """Layering: imports point down (cli -> server -> queue, policy, smtp ...), never back."""
    report = cycle_report(module_graph(SRC), KNOWN_CYCLE_EDGES)
    assert not report, report + "\n(fix the layering; an import moved into a function still counts)"


def test_known_cycle_edges_still_exist() -> None:
    graph = module_graph(SRC)
    gone = [e for e in KNOWN_CYCLE_EDGES if e[1] not in graph.get(e[0], {})]
    assert not gone, f"no longer imported, delete from KNOWN_CYCLE_EDGES: {gone}"


def test_cycle_check_catches_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    root = tmp_path / "postvakt"
    (root / "server").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "server" / "__init__.py").write_text("")
    (root / "server" / "app.py").write_text("from postvakt.server.workers import supervise\n")
    (root / "server" / "workers.py").write_text(
        "def supervise():\n    from postvakt.server import app\n"
    )
    (root / "server" / "node.py").write_text("from . import app\n")
    graph = module_graph(root)
    assert graph["postvakt.server.node"] == {"postvakt.server.app": [1]}
    report = cycle_report(graph, [])
    assert "rule 'no import cycle in src/'" in report
    assert "postvakt.server.app <-> postvakt.server.workers" in report
    assert "postvakt.server.workers (line 2) imports postvakt.server.app" in report
    # A known edge takes that cycle out, and only that one.
    assert cycle_report(graph, [("postvakt.server.workers", "postvakt.server.app")]) == ""


def test_cycle_finder_on_a_synthetic_graph() -> None:
    graph: dict[str, dict[str, list[int]]] = {
        "a": {"b": [1]},
        "b": {"c": [1]},
        "c": {"a": [3], "d": [4]},
        "d": {},
        "e": {"e": [1]},
    }
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({**graph, "c": {"d": [4]}}) == []


# ------------------------------------------------------- forbidden imports


@dataclass(frozen=True)
class Rule:
    name: str
    # Where the rule applies: package folders ("smtp/") or files, under src/postvakt; "" is all.
    applies_to: tuple[str, ...]
    # Module names; each forbids itself and its submodules.
    forbidden: tuple[str, ...]
    # Files the rule leaves out (those above the line it draws).
    exempt: tuple[str, ...] = ()
    # `from <forbidden> import <name>` is fine for these names.
    allowed_names: frozenset[str] = frozenset()
    # (file, imported name) still to be fixed; the test fails once one is gone.
    known: tuple[tuple[str, str], ...] = ()


RULES = [
    Rule(
        "nothing below cli/ imports cli/",
        applies_to=("",),
        forbidden=("postvakt.cli",),
        # `python -m postvakt` (__main__.py) is the command line's entry, as the console script is.
        exempt=("cli/", "__main__.py"),
    ),
    Rule("smtp/ and pop3/ never import asyncio", ("smtp/", "pop3/"), ("asyncio",)),
    Rule("queue/ never imports smtp/", ("queue/",), ("postvakt.smtp", "postvakt.server.smtp")),
    # Config owns parsing; policy/ reads only its own views (policy/settings.py),
    # which a Config satisfies: not even `Config` for an annotation.
    Rule("policy/ never imports postvakt.config", ("policy/",), ("postvakt.config",)),
]


def _matches(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f + ".") for f in forbidden)


def under(rel: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a path under src/postvakt is one of `prefixes` (files, or folders ending in /)."""
    return any(rel == p or (p.endswith("/") or p == "") and rel.startswith(p) for p in prefixes)


def rule_files(rule: Rule, root: Path) -> list[Path]:
    return [
        p
        for p in sorted(root.rglob("*.py"))
        if under(p.relative_to(root).as_posix(), rule.applies_to)
        and not under(p.relative_to(root).as_posix(), rule.exempt)
    ]


def breaches(rule: Rule, root: Path) -> list[tuple[str, int, str]]:
    """(file, line, what it imports) for every import the rule forbids."""
    out = []
    for path in rule_files(rule, root):
        rel = path.relative_to(root).as_posix()
        for imp in imports_of(path, root):
            if not imp.names:
                bad = [imp.module] if _matches(imp.module, rule.forbidden) else []
            elif _matches(imp.module, rule.forbidden):
                bad = [f"{imp.module}.{n}" for n in imp.names if n not in rule.allowed_names]
            else:  # `from postvakt import cli`
                full = [f"{imp.module}.{n}" for n in imp.names]
                bad = [m for m in full if _matches(m, rule.forbidden)]
            out.extend((rel, imp.line, what) for what in bad)
    return out


def breach_report(rule: Rule, root: Path) -> str:
    found = [b for b in breaches(rule, root) if (b[0], b[2]) not in rule.known]
    return "\n".join(f"rule '{rule.name}': {f}:{line} imports {what}" for f, line, what in found)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_layering_rule(rule: Rule) -> None:
    assert rule_files(rule, SRC), f"rule '{rule.name}' applies to no file"
    report = breach_report(rule, SRC)
    assert not report, report
    left = {(f, what) for f, _, what in breaches(rule, SRC)}
    stale = [k for k in rule.known if k not in left]
    assert not stale, f"rule '{rule.name}': fixed, delete from its known list: {stale}"


# One planted breach per rule: (file under src/postvakt, its text, what the report must name).
PLANTED = {
    "nothing below cli/ imports cli/": (
        "web/extra.py",
        "def f():\n    from postvakt import cli\n",
        "web/extra.py:2 imports postvakt.cli",
    ),
    "smtp/ and pop3/ never import asyncio": (
        "pop3/extra.py",
        "import asyncio.events\n",
        "pop3/extra.py:1 imports asyncio.events",
    ),
    "queue/ never imports smtp/": (
        "queue/extra.py",
        "from ..smtp import replies\n",
        "queue/extra.py:1 imports postvakt.smtp.replies",
    ),
    "policy/ never imports postvakt.config": (
        "policy/extra.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from postvakt.config import Config\n",
        "policy/extra.py:3 imports postvakt.config.Config",
    ),
}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_layering_rule_catches_a_planted_breach(rule: Rule, tmp_path: Path) -> None:
    root = tmp_path / "postvakt"
    rel, text, named = PLANTED[rule.name]
    (root / rel).parent.mkdir(parents=True)
    (root / rel).write_text(text)
    # The same import from where the rule allows it is no breach.
    (root / "cli").mkdir()
    (root / "cli" / "extra.py").write_text(text)
    assert breach_report(rule, root) == f"rule '{rule.name}': {named}"


# ------------------------------------------------------- short functions

# The adapters and the policy stay readable a screen at a time: a function
# longer than this mixes steps that want names of their own.
MAX_FUNCTION_LINES = 60
SHORT_FUNCTIONS = ("server/", "policy/")


def long_functions(root: Path, where: tuple[str, ...], limit: int) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        if not under(path.relative_to(root).as_posix(), where):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {n} lines")
    return out


def test_no_long_function_in_server_and_policy() -> None:
    found = long_functions(SRC, SHORT_FUNCTIONS, MAX_FUNCTION_LINES)
    assert not found, f"over {MAX_FUNCTION_LINES} lines (split into named steps): {found}"


def test_long_function_check_catches_one(tmp_path: Path) -> None:
    (tmp_path / "server").mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "server" / "big.py").write_text(f"def big():\n{body}")
    assert long_functions(tmp_path, SHORT_FUNCTIONS, MAX_FUNCTION_LINES) == [
        f"server/big.py:1 big: {MAX_FUNCTION_LINES + 1} lines"
    ]
