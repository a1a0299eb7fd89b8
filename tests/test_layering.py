"""The package layout's import direction, checked on the AST of every module under ``pyskim/``
(generated ``*_pb2.py`` aside).

Each package has a tier; a module may import only modules of its own tier or a lower one, and
the module-level imports must form no cycle (an import inside a function hides a cycle: it is
allowed only for an optional third-party dependency). Library code never imports the
applications (``pyskim.apps``), only ``pyskim.kernels`` touches the compiled kernels
(``pyskim._kernels``), and no module imports or reads another module's ``_private`` names.

Every violation is printed as ``path:line: importer -> imported: why``. A self-check runs the same
checker on a small synthetic package with one violation of each kind, so these tests can fail.
"""
import ast
import dataclasses
import pathlib
import sys
import textwrap

import pytest

import pyskim

#: Tier of each package (the longest matching prefix wins): lower tiers may not import higher ones.
TIERS = {
    "pyskim.errors": 0, "pyskim.proto": 0, "pyskim._kernels": 0, "pyskim.imagenet": 0,
    "pyskim.core": 1, "pyskim.io": 1, "pyskim.data": 1,
    "pyskim.kernels": 2,
    "pyskim.layers": 3,
    "pyskim.perf": 4,
    "pyskim.sparse": 5,
    "pyskim.pycaffe": 6,
    "pyskim.solvers": 7,
    "pyskim.prune": 8,
    "pyskim.convert": 9,
    "pyskim.apps": 10,
    "pyskim": 11, "pyskim.__main__": 11,        # the top: pycaffe re-exports and ``python -m pyskim``
}
#: Modules that may import the applications: the applications themselves and ``python -m pyskim``.
APPLICATIONS = ("pyskim.apps", "pyskim.__main__")
#: The compiled kernels, and the only package that may import them.
COMPILED, COMPILED_GATE = "pyskim._kernels", "pyskim.kernels"
#: Third-party modules a function may import lazily: optional extras (pydot, onnx, onnxruntime,
#: OpenCV, torch, the R-CNN selective search) and heavy ones only some commands use.
OPTIONAL_DEPENDENCIES = frozenset({
    "cv2", "h5py", "lmdb", "matplotlib", "mpi4py", "onnx", "onnxruntime", "pydot", "scipy",
    "selective_search_ijcv_with_python", "skimage", "torch", "tqdm",
})

ROOT = pathlib.Path(pyskim.__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Layout:
    """What the checker enforces for one package tree."""

    package: str
    tiers: dict
    applications: tuple
    compiled: str
    compiled_gate: str
    optional: frozenset


PYSKIM = Layout("pyskim", TIERS, APPLICATIONS, COMPILED, COMPILED_GATE, OPTIONAL_DEPENDENCIES)


@dataclasses.dataclass(frozen=True)
class Edge:
    """One import (or read of a module's attribute) found in a module."""

    path: str
    line: int
    importer: str
    imported: str
    function_level: bool
    private_name: str = ""      # the ``_name`` imported from, or read on, ``imported``
    attribute_read: bool = False    # a read of ``module._name``, not an import


@dataclasses.dataclass(frozen=True)
class Violation:
    rule: str
    path: str
    line: int
    importer: str
    imported: str
    why: str

    def __str__(self):
        return f"{self.path}:{self.line}: {self.importer} -> {self.imported}: {self.why}"


# -- reading the tree --------------------------------------------------------------------------------

def _is_generated(path):
    return path.name.endswith(("_pb2.py", "_pb2_grpc.py"))


def modules_of(root, package):
    """``{module name: path}`` of every Python source under ``root`` (the package directory), and
    the names of its compiled extension modules (``name.cpython-*.so``)."""
    sources, compiled = {}, set()
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).with_suffix("").parts
        if path.suffix == ".py" and not _is_generated(path):
            name = ".".join((package,) + (parts[:-1] if parts[-1] == "__init__" else parts))
            sources[name] = path
        elif path.suffix in (".so", ".pyd"):
            compiled.add(".".join((package,) + parts[:-1] + (parts[-1].split(".")[0],)))
    return sources, compiled


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(module, is_package, level, target):
    """The absolute module a (possibly relative) ``from``/``import`` names."""
    if level == 0:
        return target
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


class _ImportCollector(ast.NodeVisitor):
    """The internal imports of one module (with whether they sit in a function), its third-party
    function-level imports, and reads of ``_private`` attributes of imported internal modules."""

    def __init__(self, module, path, is_package, package, known):
        self.module, self.path, self.is_package = module, path, is_package
        self.package, self.known = package, known
        self.edges, self.lazy_external = [], []
        self.module_aliases = {}    # local name bound to an internal module -> that module
        self.depth = 0

    def _internal(self, name):
        return name == self.package or name.startswith(self.package + ".")

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _edge(self, node, imported, private_name="", attribute_read=False):
        edge = Edge(self.path, node.lineno, self.module, imported, self.depth > 0, private_name, attribute_read)
        if edge not in self.edges:          # ``from m import a, b``: one edge
            self.edges.append(edge)

    def visit_Import(self, node):
        for alias in node.names:
            if self._internal(alias.name):
                self._edge(node, alias.name)
                self.module_aliases[alias.asname or alias.name] = alias.name
            elif self.depth:
                self.lazy_external.append((node.lineno, alias.name))

    def visit_ImportFrom(self, node):
        source = _resolve(self.module, self.is_package, node.level, node.module)
        if not self._internal(source):
            if self.depth:
                self.lazy_external.append((node.lineno, source))
            return
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in self.known:
                self._edge(node, submodule)
                self.module_aliases[alias.asname or alias.name] = submodule
            else:
                self._edge(node, source, alias.name if _is_private(alias.name) else "")

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name) and node.value.id in self.module_aliases and _is_private(node.attr):
            self._edge(node, self.module_aliases[node.value.id], node.attr, attribute_read=True)
        self.generic_visit(node)


def collect(root, package):
    """``({module: path shown}, edges, function-level third-party imports (path, line, module, name))``
    of the tree at ``root``; paths are shown relative to the directory holding the package."""
    paths, compiled = modules_of(root, package)
    known = set(paths) | compiled
    sources, edges, lazy = {}, [], []
    for module, path in paths.items():
        shown = sources[module] = str(path.relative_to(root.parent))
        collector = _ImportCollector(module, shown, path.name == "__init__.py", package, known)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges += collector.edges
        lazy += [(shown, line, module, name) for line, name in collector.lazy_external]
    return sources, edges, lazy


# -- the rules -----------------------------------------------------------------------------------------

def tier_of(module, tiers):
    """The tier of ``module`` itself or of its longest package prefix in ``tiers`` (None when none
    matches). The root package's own entry is its ``__init__`` alone, not a prefix of everything."""
    if module in tiers:
        return tiers[module]
    parts = module.split(".")
    for end in range(len(parts) - 1, 1, -1):
        prefix = ".".join(parts[:end])
        if prefix in tiers:
            return tiers[prefix]
    return None


def _within(module, package):
    return module == package or module.startswith(package + ".")


def tier_violations(sources, edges, layout):
    found = [Violation("tier", path, 1, module, "-", "module is in no tier of the layout")
             for module, path in sources.items() if tier_of(module, layout.tiers) is None]
    for e in (e for e in edges if not e.attribute_read):
        low, high = tier_of(e.importer, layout.tiers), tier_of(e.imported, layout.tiers)
        if low is not None and high is not None and high > low:
            found.append(Violation("tier", e.path, e.line, e.importer, e.imported,
                                   f"tier {low} imports tier {high} (imports must point to the same or a lower tier)"))
    return found


def _strongly_connected(graph):
    """Tarjan's strongly connected components of ``graph`` ({node: set of nodes}), iteratively."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                components.append(component)
    return components


def cycle_violations(edges):
    """Every module-level import that lies on a cycle, naming the modules of its cycle."""
    module_level = [e for e in edges if not (e.function_level or e.attribute_read) and e.importer != e.imported]
    graph = {}
    for e in module_level:
        graph.setdefault(e.importer, set()).add(e.imported)
    found = []
    for component in _strongly_connected(graph):
        if len(component) < 2:
            continue
        members = ", ".join(sorted(component))
        found += [Violation("cycle", e.path, e.line, e.importer, e.imported,
                            f"module-level import cycle among {{{members}}}")
                  for e in module_level if e.importer in component and e.imported in component]
    return found


def function_level_violations(edges, lazy, layout):
    found = [Violation("function-level", e.path, e.line, e.importer, e.imported,
                       "function-level import of a package module (allowed only for optional dependencies)")
             for e in edges if e.function_level and not e.attribute_read]
    found += [Violation("function-level", path, line, module, name,
                        "function-level import of a module that is not an optional dependency")
              for path, line, module, name in lazy if name.split(".")[0] not in layout.optional]
    return found


def application_violations(edges, layout):
    return [Violation("apps", e.path, e.line, e.importer, e.imported, "library code imports an application")
            for e in edges
            if _within(e.imported, layout.applications[0])
            and not any(_within(e.importer, app) for app in layout.applications)]


def compiled_violations(edges, layout):
    return [Violation("compiled", e.path, e.line, e.importer, e.imported,
                      f"compiled kernels imported outside {layout.compiled_gate} (use its validated wrappers)")
            for e in edges
            if _within(e.imported, layout.compiled) and not _within(e.importer, layout.compiled_gate)
            and not _within(e.importer, layout.compiled)]


def private_violations(edges):
    return [Violation("private", e.path, e.line, e.importer, e.imported,
                      f"uses the private name {e.private_name} of another module")
            for e in edges if e.private_name and e.imported != e.importer]


def check(root, layout):
    """All violations of ``layout`` in the package at ``root``, by rule."""
    sources, edges, lazy = collect(root, layout.package)
    found = {
        "tier": tier_violations(sources, edges, layout),
        "cycle": cycle_violations(edges),
        "function-level": function_level_violations(edges, lazy, layout),
        "apps": application_violations(edges, layout),
        "compiled": compiled_violations(edges, layout),
        "private": private_violations(edges),
    }
    return {rule: sorted(set(violations), key=lambda v: (v.path, v.line, v.imported, v.why))
            for rule, violations in found.items()}


# -- the tests -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pyskim_violations():
    return check(ROOT, PYSKIM)


RULES = ["tier", "cycle", "function-level", "apps", "compiled", "private"]


@pytest.mark.parametrize("rule", RULES)
def test_pyskim_layering(pyskim_violations, rule):
    found = pyskim_violations[rule]
    report = "\n".join(str(v) for v in found)
    print(f"\n{len(found)} {rule} violation(s)\n{report}", file=sys.stderr)
    assert not found, f"{len(found)} {rule} violation(s):\n{report}"


def test_the_tree_is_read():
    sources, edges, _ = collect(ROOT, "pyskim")
    assert {"pyskim", "pyskim.core.net", "pyskim.kernels.dense", "pyskim.apps.cli"} <= set(sources)
    assert not any(path.endswith("_pb2.py") for path in sources.values())
    assert any(e.imported == "pyskim.core.blob" for e in edges)


SYNTHETIC = {
    "__init__.py": "from . import high\n",
    "low/__init__.py": "",
    "low/a.py": """
        from ..high import b          # tier: low imports high
        from . import c
        from .c import _hidden        # private name
        from . import c as helpers

        def f():
            from . import c           # function-level package import
            import json               # function-level stdlib import
            import heavy_optional     # allowed
            return helpers._secret    # private module attribute
        """,
    "low/c.py": "from . import a\n",   # cycle a <-> c
    "low/_ext.cpython-311-x86_64-linux-gnu.so": "",
    "low/uses_ext.py": "from . import _ext\n",
    "high/__init__.py": "",
    "high/b.py": "from ..low import a\nfrom ..apps import tool\n",
    "apps/__init__.py": "",
    "apps/tool.py": "TOOL = 1\n",
    "orphan/x.py": "",
}
SYNTHETIC_LAYOUT = Layout("fakepkg", {"fakepkg": 9, "fakepkg.low": 0, "fakepkg.high": 1, "fakepkg.apps": 2},
                          ("fakepkg.apps",), "fakepkg.low._ext", "fakepkg.low.a", frozenset({"heavy_optional"}))


def test_checker_catches_each_kind_of_violation(tmp_path):
    root = tmp_path / "fakepkg"
    for name, text in SYNTHETIC.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text).lstrip("\n"))
    found = check(root, SYNTHETIC_LAYOUT)
    pairs = {rule: {(v.path, v.line, v.importer, v.imported) for v in violations}
             for rule, violations in found.items()}
    a = "fakepkg/low/a.py"
    assert pairs["tier"] == {(a, 1, "fakepkg.low.a", "fakepkg.high.b"),
                             ("fakepkg/high/b.py", 2, "fakepkg.high.b", "fakepkg.apps.tool"),
                             ("fakepkg/orphan/x.py", 1, "fakepkg.orphan.x", "-")}
    assert pairs["cycle"] == {(a, 1, "fakepkg.low.a", "fakepkg.high.b"),
                              ("fakepkg/high/b.py", 1, "fakepkg.high.b", "fakepkg.low.a"),
                              (a, 2, "fakepkg.low.a", "fakepkg.low.c"), (a, 3, "fakepkg.low.a", "fakepkg.low.c"),
                              (a, 4, "fakepkg.low.a", "fakepkg.low.c"),
                              ("fakepkg/low/c.py", 1, "fakepkg.low.c", "fakepkg.low.a")}
    assert pairs["function-level"] == {(a, 7, "fakepkg.low.a", "fakepkg.low.c"), (a, 8, "fakepkg.low.a", "json")}
    assert pairs["apps"] == {("fakepkg/high/b.py", 2, "fakepkg.high.b", "fakepkg.apps.tool")}
    assert pairs["compiled"] == {("fakepkg/low/uses_ext.py", 1, "fakepkg.low.uses_ext", "fakepkg.low._ext")}
    assert pairs["private"] == {(a, 3, "fakepkg.low.a", "fakepkg.low.c"), (a, 10, "fakepkg.low.a", "fakepkg.low.c")}
    assert "tier 0 imports tier 1" in next(str(v) for v in found["tier"] if v.line == 1 and v.path == a)


def test_checker_passes_a_clean_package(tmp_path):
    root = tmp_path / "fakepkg"
    for name, text in {"__init__.py": "from .high import b\n", "low/__init__.py": "", "low/a.py": "X = 1\n",
                       "high/__init__.py": "", "high/b.py": "from ..low.a import X\n\ndef f():\n    import heavy_optional\n",
                       "apps/__init__.py": "", "apps/tool.py": "from ..high import b\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    assert not any(check(root, SYNTHETIC_LAYOUT).values())
