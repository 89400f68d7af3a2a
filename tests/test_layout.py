"""The code base's layout: no import goes in a circle, packages meet only through public names, the library never
imports the Ray layer, and every command the README shows is a module that answers ``--help``.

Imports are read from the source (``ast``), all of them: module level, inside functions (the lazy ones) and under
``TYPE_CHECKING`` -- a circle hidden in a function body is still a circle a reader has to untangle.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("twohead", "rayjobs")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every module of the two packages."""
    mods = {}
    for top in PACKAGES:
        for f in sorted((REPO / top).rglob("*.py")):
            parts = list(f.relative_to(REPO).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            mods[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return mods


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module of ours that ``name`` (a module, or a module's attribute) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _package(module: str) -> str:
    """The package a module belongs to: ``rayjobs.search`` for ``rayjobs.search.study``, ``twohead`` for
    ``twohead.loop``, the top level for a thin entry module (``rayjobs.prepare``)."""
    return module if MODULES[module][1] else module.rpartition(".")[0]


def _source(node: ast.ImportFrom, package: str) -> str:
    """The absolute module a ``from ... import`` in ``package`` reads from (``from .cells import`` included)."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every import statement of ``module`` that names ours."""
    f = MODULES[module][0]
    package = _package(module)
    out = []
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            out += [(t, "", node.lineno) for a in node.names if (t := _owner(a.name))]
        elif isinstance(node, ast.ImportFrom):
            source = _source(node, package)
            for a in node.names:
                sub = _owner(f"{source}.{a.name}")  # `from pkg import submodule` imports the submodule
                if sub is not None and sub != _owner(source) and sub == f"{source}.{a.name}":
                    out.append((sub, "", node.lineno))
                elif (t := _owner(source)) is not None:
                    out.append((t, a.name, node.lineno))
    return [(t, n, line) for t, n, line in out if t != module]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_circle():
    """The check below can fail: a -> b -> c -> a is one circle, d -> a is not part of it."""
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    edges = {m: {t for t, _, _ in _imports(m)} for m in MODULES}
    assert sum(map(len, edges.values())) > 100  # the graph was read (a parser that finds nothing finds no circle)
    assert _cycles(edges) == []


def _module_aliases(module: str) -> dict[str, str]:
    """Local name -> module of ours, for ``import a.b as x`` and ``from a import b as x`` (b a module)."""
    package = _package(module)
    out = {}
    for node in ast.walk(ast.parse(MODULES[module][0].read_text())):
        if isinstance(node, ast.Import):
            out.update({a.asname: a.name for a in node.names if a.asname and a.name in MODULES})
        elif isinstance(node, ast.ImportFrom):
            source = _source(node, package)
            out.update({a.asname or a.name: f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in MODULES})
    return out


def _private_uses(module: str) -> list[tuple[str, str, int]]:
    """(module, private name, line) for every ``from m import _x`` and ``m._x`` of ``module``."""
    uses = [(t, n, line) for t, n, line in _imports(module) if n.startswith("_")]
    uses += [(t, "", line) for t, _, line in _imports(module) if any(p.startswith("_") and p != "__main__" for p in t.split("."))]
    aliases = _module_aliases(module)
    for node in ast.walk(ast.parse(MODULES[module][0].read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                uses.append((aliases[node.value.id], node.attr, node.lineno))
    return uses


def _inside(module: str, target: str) -> bool:
    return _package(module) == _package(target) or _package(target).startswith(_package(module) + ".")


def test_the_private_name_finder_finds_them():
    """The check below can fail: the test sees both forms in a module written for it."""
    MODULES["rayjobs._probe"] = (REPO / "tests" / "data" / "private_probe.py.txt", False)
    try:
        found = {(t, n) for t, n, _ in _private_uses("rayjobs._probe")}
    finally:
        del MODULES["rayjobs._probe"]
    assert found == {("rayjobs.data.storage", "_errors"), ("rayjobs.data.stream", "_hidden")}


def test_packages_meet_through_public_names_only():
    """``storage._errors`` is fine inside rayjobs.data, not from rayjobs.search."""
    private = [
        f"{MODULES[m][0].relative_to(REPO)}:{line} uses {target}.{name}"
        for m in MODULES
        for target, name, line in _private_uses(m)
        if not _inside(m, target)
    ]
    assert private == []


def test_the_library_never_imports_the_ray_layer():
    for m in MODULES:
        if m.startswith("twohead"):
            assert not [t for t, _, _ in _imports(m) if t.startswith("rayjobs")], m
            tree = ast.parse(MODULES[m][0].read_text())
            names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
            assert "ray" not in names, m


def test_every_package_says_what_it_is_for():
    for f, is_pkg in MODULES.values():
        if is_pkg:
            doc = ast.get_docstring(ast.parse(f.read_text()))
            assert doc and len(doc.split()) >= 12, f"{f.relative_to(REPO)} has no docstring saying what it is for"


# `python -m rayjobs.search` etc.; a placeholder (`python -m rayjobs.<command>`) is not a command
README_COMMANDS = sorted(set(re.findall(r"python -m (rayjobs(?:\.\w+)*)(?![.\w<])", (REPO / "README.md").read_text())))


def test_the_readme_shows_the_commands():
    assert {"rayjobs.search", "rayjobs.train", "rayjobs.prepare", "rayjobs.labels", "rayjobs.report"} <= set(README_COMMANDS)
    assert {"rayjobs.reproduce", "rayjobs.bench", "rayjobs.local_cluster", "rayjobs.faults"} <= set(README_COMMANDS)
    assert "rayjobs" not in README_COMMANDS


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    """``python -m <command> --help`` of every README command, from the repository, run a few at a time."""

    def run(command: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        return subprocess.run(
            [sys.executable, "-m", command, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(README_COMMANDS, pool.map(run, README_COMMANDS)))


@pytest.mark.parametrize("command", README_COMMANDS)
def test_every_readme_command_runs_as_typed(helps, command):
    """As the README types it: usage of that command, exit 0."""
    r = helps[command]
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"usage: python -m {command}"), r.stdout[:300]
