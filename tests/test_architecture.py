"""The package's structure: one-way imports, backends in one place, parameters declared once."""
import ast
import inspect
import re
from pathlib import Path

import convredunet as crn
from convredunet import cli
from convredunet._validation import PARAMETERS

PACKAGE = Path(crn.__file__).parent


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    """Package modules imported anywhere in ``path`` (top level or inside functions)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found.update(n for n in names + [target] if n.startswith("convredunet"))
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("convredunet"))
    return found


def _graph():
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def test_import_graph_has_no_cycle():
    graph = _graph()
    # The package's __init__ only re-exports; leave it out (everything imports through it
    # when written "from . import x").
    graph = {m: {d for d in deps if d != "convredunet"} for m, deps in graph.items()
             if m != "convredunet"}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_no_backend_branches_outside_backend():
    pattern = re.compile(r"backend\.name\s*[!=]=|\bis_torch\(|\.name\s*==\s*[\"']torch")
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "backend" in path.relative_to(PACKAGE).parts:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    # export.py is the torch module by nature; everything else goes through backend/.
    assert [o for o in offenders if not o.startswith("export.py")] == []


def test_parameters_declared_once():
    for cls in (crn.ReduNet1D, crn.ReduNet2D, crn.ReduNetVector):
        names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        assert set(names) <= set(PARAMETERS), set(names) - set(PARAMETERS)
        for name in names:  # the docstring documents each one
            assert f"{name} :" in (cls.__doc__ or "") or cls is not crn.ReduNet1D
    used = set().union(*(inspect.signature(c.__init__).parameters
                         for c in (crn.ReduNet1D, crn.ReduNet2D, crn.ReduNetVector)))
    assert set(PARAMETERS) <= used


def test_cli_options_come_from_the_table():
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["fit"].format_help()
    for name, param in PARAMETERS.items():
        if name == "verbose":
            continue
        assert "--" + name.replace("_", "-") in help_text
        assert param.help.split()[0] in help_text


def test_estimators_delegate_to_the_network():
    X = [[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 0.0, 2.0], [0.0, 0.0, 1.0, 5.0]]
    net = crn.ReduNet1D(n_layers=1, n_channels=3, kernel_size=1, eps2=0.1).fit(X, [0, 1, 0, 1])
    assert net.layers_ is net.network_.layers and net.lifting_ is net.network_.lifting
    source = (PACKAGE / "io.py").read_text() + (PACKAGE / "export.py").read_text()
    assert "._check_fitted" not in source and "._backend" not in source
