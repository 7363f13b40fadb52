"""The dependency rule of DESIGN §3, machine-checked: who may import whom in ``accord``.

Layers, top to bottom (a module may import its own layer's shared modules and any layer
below, never one above)::

    5  entry points   accord.cli, accord.commands
    4  drivers        accord.simulation, accord.federation, accord.vertical, accord.flower,
                      accord.tee.runtime (and any accord.tee module outside accord.tee.core)
    3  round logic    accord.rounds, accord.fl, accord.run, accord.scenario,
                      accord.scenario_codec, accord.reporting, accord.config, accord.tables,
                      accord.csv_lines, accord.credentials
    2  domain         accord.aggregation, accord.training, accord.data, accord.alignment,
                      accord.tee.core
    1  shared         accord (the package), accord.errors, accord.types, accord._validation,
                      accord.atomic_files, accord.settings_mapping, accord.failpoints,
                      accord.optim, accord.proc, accord.checkpoint_files,
                      accord.rate_limits

Rules, each named in a failure:

- ``unplaced``: every module of ``src/accord`` belongs to a layer (a new top-level module
  or package is added to ``LAYERS`` below, in the layer its imports allow).
- ``upward``: nothing imports a module of a higher layer.
- ``sideways``: a driver does not import another driver, and a domain package does not
  import another domain package (each is usable alone).
- ``cycle``: no two modules import each other, directly or through others (a cycle is a
  sign that one job is split across two modules).
- ``pure``: ``accord.aggregation``, ``accord.alignment`` and ``accord.tee.core`` import no
  network, process, thread or file module (``PURE_FORBIDDEN``) and never call ``open``.

Every import counts: at module level, inside functions (lazy imports) and under
``TYPE_CHECKING``. Exceptions live in ``ALLOWED`` (one import), ``SIDEWAYS_ALLOWED`` (one
group on another of its layer) and ``KNOWN_CYCLES``, one line each with its reason; a
listed exception that is no longer needed fails the test too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "accord"

#: Layer number -> (its name, the module prefixes in it). A module belongs to the layer of
#: its longest matching prefix; its *group* is that prefix (a driver, a domain package).
LAYERS: Mapping[int, tuple[str, tuple[str, ...]]] = {
    5: ("entry points", ("accord.cli", "accord.commands")),
    4: (
        "drivers",
        (
            "accord.simulation",
            "accord.federation",
            "accord.vertical",
            "accord.flower",
            "accord.tee",  # every tee module outside tee.core is runtime
            "accord.tee.runtime",
        ),
    ),
    3: (
        "round logic",
        (
            "accord.rounds",
            "accord.fl",
            "accord.run",
            "accord.scenario",
            "accord.scenario_codec",
            "accord.reporting",
            "accord.config",
            "accord.tables",
            "accord.csv_lines",
            # credentials folders, their checks and gRPC TLS: below every networked driver
            # (federation and vertical both use it; neither may import the other)
            "accord.credentials",
        ),
    ),
    2: (
        "domain",
        (
            "accord.aggregation",
            "accord.training",
            "accord.data",
            "accord.alignment",
            "accord.tee.core",
        ),
    ),
    1: (
        "shared",
        (
            "accord",
            "accord.errors",
            "accord.types",
            "accord._validation",
            "accord._lazy",  # packages' re-exports loaded on first use (PEP 562)
            "accord.atomic_files",
            "accord.settings_mapping",
            "accord.failpoints",
            "accord.optim",
            "accord.proc",
            "accord.checkpoint_files",  # pickle-free checkpoints, any driver's
            "accord.rate_limits",
        ),
    ),
}

#: Prefixes that form one group with another: the tee modules not yet moved into
#: tee/runtime are runtime.
SAME_GROUP: Mapping[str, str] = {"accord.tee": "accord.tee.runtime"}

#: Layers whose groups may not import each other.
NO_SIDEWAYS = frozenset({4, 2})

#: Groups that must stay pure: no network, processes, threads or files.
PURE_GROUPS = frozenset({"accord.aggregation", "accord.alignment", "accord.tee.core"})
PURE_FORBIDDEN = (
    "asyncio",
    "concurrent",
    "grpc",
    "http",
    "multiprocessing",
    "pathlib",
    "pyarrow.csv",
    "pyarrow.dataset",
    "pyarrow.fs",
    "pyarrow.parquet",
    "selectors",
    "shutil",
    "signal",
    "socket",
    "socketserver",
    "ssl",
    "subprocess",
    "tempfile",
    "threading",
    "urllib",
)

#: (importer, imported) -> why the rule does not apply. Keep it short.
ALLOWED: Mapping[tuple[str, str], str] = {}

#: (group, group) of one layer -> why the first may import the second.
SIDEWAYS_ALLOWED: Mapping[tuple[str, str], str] = {
    ("accord.simulation", "accord.federation"): (
        "run_app is the federated run over the in-memory grid (DESIGN §3: one driver); it "
        "uses federation's transport-free driver, grid, worker and engine, never gRPC"
    ),
    ("accord.tee.core", "accord.alignment"): (
        "the enclave's logic runs the alignment algorithms: the tee core sits on alignment"
    ),
}

#: Import cycles (their modules, sorted) -> why they are tolerated for now.
KNOWN_CYCLES: Mapping[tuple[str, ...], str] = {}


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int


def module_name(path: Path, root: Path = SOURCE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def imports_of(
    source: str, module: str, is_package: bool, known: frozenset[str]
) -> list[tuple[str, int]]:
    """Every module ``source`` imports, absolute (``from X import y`` counts as ``X.y``
    when that is a module of ``known``), with its line. Calls of the builtin ``open`` are
    reported as the pseudo-module ``open()``."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = (
                _resolve_relative(module, is_package, node.level, node.module)
                if node.level
                else node.module or ""
            )
            subs = [f"{target}.{alias.name}" for alias in node.names]
            inner = [sub for sub in subs if sub in known]
            found.extend((name, node.lineno) for name in inner)
            if len(inner) < len(subs):
                found.append((target, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "open"
        ):
            found.append(("open()", node.lineno))
    return sorted(found, key=lambda item: item[1])


def import_graph(root: Path = SOURCE) -> dict[str, list[Edge]]:
    """Module -> its imports, for every ``.py`` file under ``root`` but generated code."""
    files = {
        module_name(path, root): path
        for path in sorted(root.rglob("*.py"))
        if "proto" not in path.relative_to(root).parts
    }
    known = frozenset(files)
    return {
        module: [
            Edge(module, imported, line)
            for imported, line in imports_of(
                path.read_text(encoding="utf-8"), module, path.name == "__init__.py", known
            )
        ]
        for module, path in files.items()
    }


def place(module: str) -> tuple[int, str] | None:
    """(layer, group) of an ``accord`` module: its longest matching prefix (``accord``, the
    package itself, matches only itself); ``None`` when it is in no layer."""
    best: tuple[int, str] | None = None
    for layer, (_, prefixes) in LAYERS.items():
        for prefix in prefixes:
            inside = module == prefix or (prefix != "accord" and _is_under(module, prefix))
            if inside and (best is None or len(prefix) > len(best[1])):
                best = (layer, prefix)
    return None if best is None else (best[0], SAME_GROUP.get(best[1], best[1]))


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(
    graph: Mapping[str, Iterable[Edge]],
    allowed: Mapping[tuple[str, str], str] = ALLOWED,
) -> list[str]:
    """One line per broken rule: where, the importing module, the imported one, the rule."""
    problems: list[str] = []
    for module in sorted(graph):
        here = place(module)
        if here is None:
            problems.append(f"{module}: unplaced: the module is in no layer (add it to LAYERS)")
            continue
        layer, group = here
        for edge in graph[module]:
            where = f"{module}:{edge.line}: imports {edge.imported}"
            if (module, edge.imported) in allowed:
                continue
            if group in PURE_GROUPS and any(
                _is_under(edge.imported, forbidden) for forbidden in (*PURE_FORBIDDEN, "open()")
            ):
                problems.append(
                    f"{where}: pure: {group} may not use the network, processes, threads or files"
                )
                continue
            if not _is_under(edge.imported, "accord"):
                continue
            there = place(edge.imported)
            if there is None:
                continue  # reported as unplaced where it is defined
            their_layer, their_group = there
            if their_layer > layer:
                problems.append(
                    f"{where}: upward: layer {layer} ({LAYERS[layer][0]}) may not import "
                    f"layer {their_layer} ({LAYERS[their_layer][0]})"
                )
            elif (
                their_layer == layer
                and their_group != group
                and layer in NO_SIDEWAYS
                and (group, their_group) not in SIDEWAYS_ALLOWED
            ):
                problems.append(
                    f"{where}: sideways: {group} may not import {their_group} "
                    f"(both {LAYERS[layer][0]})"
                )
    return problems


def cycles(graph: Mapping[str, Iterable[Edge]]) -> list[tuple[str, ...]]:
    """The import cycles among the modules of ``graph`` (strongly connected components of
    more than one module), each sorted."""
    successors = {
        m: sorted({e.imported for e in edges if e.imported in graph}) for m, edges in graph.items()
    }
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[tuple[str, ...]] = []
    for start in sorted(successors):
        if start in order:
            continue
        work = [(start, iter(successors[start]))]
        order[start] = low[start] = len(order)
        stack.append(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == order[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(tuple(sorted(component)))
            elif child not in order:
                order[child] = low[child] = len(order)
                stack.append(child)
                work.append((child, iter(successors[child])))
            elif child in stack:
                low[node] = min(low[node], order[child])
    return sorted(found)


def cycle_violations(
    graph: Mapping[str, Iterable[Edge]],
    known: Mapping[tuple[str, ...], str] = KNOWN_CYCLES,
) -> list[str]:
    return [
        f"{' <-> '.join(cycle)}: cycle: these modules import each other"
        for cycle in cycles(graph)
        if cycle not in known
    ]


# ----------------------------------------------------------------------------- the contract


def test_accord_keeps_the_dependency_rule() -> None:
    graph = import_graph()
    problems = violations(graph) + cycle_violations(graph)
    assert not problems, "the import contract is broken:\n" + "\n".join(problems)


def test_the_checker_reads_the_real_tree() -> None:
    graph = import_graph()
    internal = [e for edges in graph.values() for e in edges if _is_under(e.imported, "accord")]
    # Not vacuous: every file is read and the imports between them are found, lazy ones too.
    assert len(graph) == len([p for p in SOURCE.rglob("*.py") if "proto" not in p.parts])
    assert len(internal) > 200
    assert "accord.simulation.driver" in {e.imported for e in graph["accord.commands.simulate"]}
    assert all(place(module) is not None for module in graph)


def test_allowed_exceptions_are_still_needed() -> None:
    graph = import_graph()
    present = {(e.importer, e.imported) for edges in graph.values() for e in edges}
    stale = sorted(set(ALLOWED) - present)
    assert not stale, f"ALLOWED lists imports that no longer exist: {stale}"
    groups = set()
    for importer, imported in present:
        here, there = place(importer), place(imported)
        if here is not None and there is not None:
            groups.add((here[1], there[1]))
    unused = sorted(set(SIDEWAYS_ALLOWED) - groups)
    assert not unused, f"SIDEWAYS_ALLOWED lists group imports that no longer exist: {unused}"
    gone = sorted(set(KNOWN_CYCLES) - set(cycles(graph)))
    assert not gone, f"KNOWN_CYCLES lists cycles that are cut: {gone}"


# ----------------------------------------------------------------------------- the checker


def _graph(*edges: tuple[str, str]) -> dict[str, list[Edge]]:
    graph: dict[str, list[Edge]] = {}
    for importer, imported in edges:
        graph.setdefault(importer, []).append(Edge(importer, imported, 7))
    return graph


@pytest.mark.parametrize(
    ("edge", "expected"),
    [
        (
            ("accord.aggregation.base", "accord.commands.simulate"),
            "accord.aggregation.base:7: imports accord.commands.simulate: upward: layer 2 "
            "(domain) may not import layer 5 (entry points)",
        ),
        (
            ("accord.federation.driver", "accord.simulation.driver"),
            "accord.federation.driver:7: imports accord.simulation.driver: sideways: "
            "accord.federation may not import accord.simulation (both drivers)",
        ),
        (
            ("accord.aggregation.actor_critic", "accord.training.optim"),
            "accord.aggregation.actor_critic:7: imports accord.training.optim: sideways: "
            "accord.aggregation may not import accord.training (both domain)",
        ),
        (
            ("accord.alignment.intersect", "socket"),
            "accord.alignment.intersect:7: imports socket: pure: accord.alignment may not "
            "use the network, processes, threads or files",
        ),
        (
            ("accord.tee.core.channel", "asyncio.streams"),
            "accord.tee.core.channel:7: imports asyncio.streams: pure: accord.tee.core may "
            "not use the network, processes, threads or files",
        ),
        (
            ("accord.tee.core.wire", "accord.tee.runtime.host"),
            "accord.tee.core.wire:7: imports accord.tee.runtime.host: upward: layer 2 "
            "(domain) may not import layer 4 (drivers)",
        ),
        (
            ("accord.errors", "accord.rounds"),
            "accord.errors:7: imports accord.rounds: upward: layer 1 (shared) may not import "
            "layer 3 (round logic)",
        ),
        (
            ("accord.newthing", "accord.errors"),
            "accord.newthing: unplaced: the module is in no layer (add it to LAYERS)",
        ),
    ],
)
def test_the_checker_names_a_planted_violation(edge: tuple[str, str], expected: str) -> None:
    assert violations(_graph(edge)) == [expected]


def test_the_checker_lets_the_allowed_imports_through() -> None:
    graph = _graph(
        ("accord.commands.simulate", "accord.simulation.driver"),  # down
        ("accord.rounds", "accord.aggregation.base"),  # down
        ("accord.run", "accord.rounds"),  # sideways in round logic: allowed
        ("accord.federation.driver", "accord.federation.grid"),  # inside one driver
        ("accord.tee.runtime.host", "accord.tee.core.wire"),  # runtime -> core
        ("accord.tee.runtime.host", "accord.tee.party"),  # not yet moved: runtime too
        ("accord.alignment.intersect", "numpy"),
        ("accord.aggregation.base", "accord.types"),
    )
    assert violations(graph) == []
    upward = _graph(("accord.rounds", "accord.federation.grid"))
    assert len(violations(upward)) == 1
    assert violations(upward, {("accord.rounds", "accord.federation.grid"): "test"}) == []


def test_the_checker_finds_a_planted_cycle_through_three_modules() -> None:
    graph = _graph(
        ("accord.reporting.plots", "accord.reporting.writer"),
        ("accord.reporting.writer", "accord.reporting.summary"),
        ("accord.reporting.summary", "accord.reporting.plots"),
        ("accord.reporting.summary", "accord.rounds"),
        ("accord.rounds", "accord.errors"),
    )
    graph.setdefault("accord.errors", [])

    assert cycle_violations(graph) == [
        "accord.reporting.plots <-> accord.reporting.summary <-> accord.reporting.writer: "
        "cycle: these modules import each other"
    ]
    del graph["accord.reporting.summary"][0]
    assert cycle_violations(graph) == []


def test_the_reader_resolves_relative_lazy_and_from_imports(tmp_path: Path) -> None:
    package = tmp_path / "accord"
    (package / "aggregation").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("")
    (package / "aggregation" / "__init__.py").write_text("from .base import X\n")
    (package / "aggregation" / "base.py").write_text(
        "from accord import errors\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from accord.commands import simulate\n"
        "def f():\n    import socket\n    return open('x')\n"
    )

    graph = import_graph(package)

    assert [e.imported for e in graph["accord.aggregation"]] == ["accord.aggregation.base"]
    assert [e.imported for e in graph["accord.aggregation.base"]] == [
        "accord.errors",
        "typing",
        "accord.commands",
        "socket",
        "open()",
    ]
    assert [line.split(": ", 2)[2].split(":")[0] for line in violations(graph)] == [
        "upward",
        "pure",
        "pure",
    ]


if __name__ == "__main__":  # pragma: no cover - a quick look at the graph by hand
    print("\n".join(violations(import_graph())) or "ok", file=sys.stderr)
