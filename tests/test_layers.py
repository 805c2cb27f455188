"""The layers of the house, checked by reading the source (``ast``), not by importing it.

- tasks/ and report/ import nothing from deepfield.train: inference reads data through the
  data layer (deepfield.data.batches, deepfield.data.splits), never through the trainer.
- report/ only draws: it imports neither torch nor the data layer's batches; what it shows is
  measured by tasks/ functions (deepfield.tasks.evaluate) it calls.
- No module reaches into another's private names: no ``from deepfield.x import _name``, no
  ``module._name`` on an imported deepfield module, and no ``obj._name`` on an object of a
  class defined in another module (the store's ``_group`` stays inside the store).
- No import cycles among deepfield's modules, counting the imports inside functions (a lazy
  import still ties two modules together) and leaving out ``if TYPE_CHECKING:`` blocks.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "deepfield"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_runtime(tree: ast.AST):
    """Every node of `tree` outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against `module`)."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def _imports(module: str):
    """(imported deepfield module, the names taken from it, node) for each import in `module`."""
    for node in _walk_runtime(TREES[module]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "deepfield":
                    yield alias.name, (), node
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target.split(".")[0] == "deepfield":
                yield target, tuple(a.name for a in node.names), node


def _edges(module: str) -> set[str]:
    """The deepfield modules `module` imports (a submodule taken by ``from package import sub``
    counts as that submodule)."""
    out = set()
    for target, names, _ in _imports(module):
        subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
        out.update(subs)
        if not names or len(subs) < len(names):
            out.add(target)
    out.discard(module)
    return {m for m in out if m in MODULES}


def test_tasks_and_report_import_nothing_from_train():
    found = []
    for module in MODULES:
        if module.startswith(("deepfield.tasks", "deepfield.report")):
            for target, names, node in _imports(module):
                if target == "deepfield.train" or target.startswith("deepfield.train.") or (
                        target == "deepfield" and "train" in names):
                    found.append(f"{module}:{node.lineno} imports {target}")
    assert not found, "\n".join(found)


def test_report_only_draws():
    found = []
    for module in MODULES:
        if module.startswith("deepfield.report"):
            for node in _walk_runtime(TREES[module]):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    targets = [_resolve(module, node)]
                else:
                    continue
                found += [f"{module}:{node.lineno} imports {t}" for t in targets
                          if t.split(".")[0] == "torch" or t.startswith("deepfield.data.batches")]
    assert not found, "\n".join(found)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_members() -> dict[str, set[str]]:
    """Per module, the private attributes its classes define (``self._x = ...``, methods and
    class attributes named ``_x``)."""
    out: dict[str, set[str]] = {}
    for module, tree in TREES.items():
        names = out.setdefault(module, set())
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for node in ast.walk(cls):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(node.name):
                    names.add(node.name)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                        isinstance(node.value, ast.Name) and node.value.id in ("self", "cls") and _private(node.attr):
                    names.add(node.attr)
                elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node in cls.body:
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    names.update(t.id for t in targets if isinstance(t, ast.Name) and _private(t.id))
    return out


def _package(module: str) -> str:
    """The package a module belongs to (a package's __init__ belongs to the package itself)."""
    return module if MODULES.get(module, Path()).name == "__init__.py" else module.rsplit(".", 1)[0]


def test_no_module_reaches_into_another_modules_private_names():
    """Underscore names stay inside their package: the modules of one package (e.g. importers'
    formats and their _common helpers) share them, no other package reads them."""
    members = _private_members()
    found = []
    for module, tree in TREES.items():
        module_aliases = {}  # local name -> deepfield module it is bound to
        for target, names, node in _imports(module):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if _private(alias.name) and _package(target) != _package(module):
                        found.append(f"{module}:{node.lineno} imports {target}.{alias.name}")
                    if f"{target}.{alias.name}" in MODULES:
                        module_aliases[alias.asname or alias.name] = f"{target}.{alias.name}"
            else:
                for alias in node.names:
                    if alias.asname:
                        module_aliases[alias.asname] = alias.name
        others = set().union(*(v for k, v in members.items() if k != module)) - members[module]
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not _private(node.attr):
                continue
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner in module_aliases:
                found.append(f"{module}:{node.lineno} reads {module_aliases[owner]}.{node.attr}")
            elif owner not in ("self", "cls") and node.attr in others:
                found.append(f"{module}:{node.lineno} reads {ast.unparse(node)} (a private attribute defined "
                             "by a class of another module)")
    assert not found, "\n".join(found)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(components)


def test_cycle_finder_finds_a_known_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    graph = {m: _edges(m) for m in MODULES}
    cycles = {tuple(c) for c in _cycles(graph)}
    described = []
    for component in sorted(cycles):
        inside = set(component)
        described.append("; ".join(f"{m} -> {', '.join(sorted(graph[m] & inside))}" for m in component))
    assert not described, "import cycles:\n" + "\n".join(described)


def test_conv_decoder_starts_as_nearest_neighbour_upsampling():
    """ICNR: the sub-pixel convolution's four kernels start equal, so an untrained decoder prints
    no 2x2 (Nyquist-frequency) pattern: each 2x2 block of its output is one value."""
    import torch

    from deepfield.nn.blocks import ConvDecoder

    torch.manual_seed(0)
    out = ConvDecoder(4, 3, 16, (8, 16))(torch.randn(5, 4))
    assert out.shape == (5, 3, 16, 16)
    for i, j in ((0, 1), (1, 0), (1, 1)):
        assert torch.equal(out[..., i::2, j::2], out[..., ::2, ::2])
    assert out[..., ::2, ::2].std() > 0  # and not a constant image
