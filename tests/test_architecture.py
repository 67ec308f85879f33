"""The house rules of docs/architecture.md, checked on the source: no import cycles between files (lazy
imports inside functions count: they hid cycles before), no run-folder path spelled outside
``dream3d/rundir.py``, no kind switch in the stage systems."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dream3d"
RUN_FOLDER_NAMES = {"ckpts", "last.ckpt", "summary.json", "config.yaml", "eval.json", "metrics.csv", "model.glb",
                    "turntable.mp4", "export", "stages", "val", ".lock", "reference"}
# files of the same names that belong to other folders: the prior's training folder, a comparison's folder
NOT_RUN_FOLDERS = {("dream3d/shapeworld/train.py", "summary.json"), ("dream3d/compare/report.py", "summary.json"),
                   ("dream3d/batch/results.py", "summary.json")}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the dream3d modules it imports anywhere in its file (top level or inside functions)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # `import dream3d.x.y` of a name inside a module
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != name and t.startswith("dream3d"):
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_files():
    graph = import_graph()
    # a package's __init__ that imports its own submodules is not a cycle of design: drop parent -> child edges
    for name in graph:
        graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    assert cycles(graph) == []


def test_the_import_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_run_folder_paths_are_spelled_only_in_rundir():
    """A string constant naming a run-folder part, joined with ``/`` (a Path join), appears only in rundir.py."""
    offenders = []
    for name, path in modules().items():
        if name == "dream3d.rundir":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                for side in (node.left, node.right):
                    where = str(path.relative_to(PACKAGE.parent))
                    if isinstance(side, ast.Constant) and side.value in RUN_FOLDER_NAMES and \
                            (where, side.value) not in NOT_RUN_FOLDERS:
                        offenders.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {side.value!r}")
    assert offenders == []


def test_systems_have_no_kind_switch():
    for path in (PACKAGE / "systems").glob("*.py"):
        text = path.read_text()
        assert "KIND" not in text and ".system ==" not in text, path
