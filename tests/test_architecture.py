"""The package's structure, read from its syntax trees (``ast``), never by regex: one-way
imports, backend questions answered in backend/, the estimators' private members kept
private, nothing global changed at import, parameters declared once."""
import ast
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import convredunet as crn
from convredunet import cli
from convredunet._validation import PARAMETERS

PACKAGE = Path(crn.__file__).parent
ROOT = PACKAGE.parent


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}

# The layers. The engine (arrays, spectra, subspaces, threads, checks) knows nothing of the
# network, the estimators or the ways they are saved, exported, distributed or run.
ENGINE = {"convredunet.backend", "convredunet.spectral", "convredunet.spatial",
          "convredunet.subspace", "convredunet._threads", "convredunet._inputs",
          "convredunet._validation", "convredunet._memory", "convredunet._parallel",
          "convredunet._files", "convredunet._fingerprints"}
ABOVE = {"convredunet." + name for name in (
    "network", "operators", "estimators", "io", "export", "finetune", "distributed",
    "_dask_cli", "cli", "datasets", "figures", "testing")}
ENTRY = {"convredunet", "convredunet.__main__"}  # re-exports, ``python -m convredunet``


def _is_engine(name):
    return name in ENGINE or name.startswith("convredunet.backend.")


def _where(name, node):
    return f"{MODULES[name].relative_to(ROOT)}:{node.lineno}"


def _imports(name):
    """Package modules ``name`` imports anywhere (top level or inside functions), each with
    the line of its first import.

    ``from . import spectral`` imports ``convredunet.spectral``; ``from .backend import
    resolve`` imports ``convredunet.backend``; ``from convredunet import ReduNet1D`` (a name
    of the package's ``__init__``, not a module) imports ``convredunet`` itself, which
    re-exports the estimators.
    """
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = {}
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                found.setdefault(full if full in MODULES else target, node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, node.lineno)
    return {module: line for module, line in found.items() if module in MODULES and
            module != name}


GRAPH = {name: _imports(name) for name in MODULES}


def _chain(start, forbidden):
    """The import chains from ``start`` to a module of ``forbidden``, as readable lines."""
    chains, seen, stack = [], {start}, [(start, [])]
    while stack:
        module, steps = stack.pop()
        for dep, line in sorted(GRAPH[module].items()):
            step = steps + [f"{dep} ({MODULES[module].relative_to(ROOT)}:{line})"]
            if dep in forbidden:
                chains.append(f"{start} -> " + " -> ".join(step))
            elif dep not in seen:
                seen.add(dep)
                stack.append((dep, step))
    return chains


# --- one-way imports -------------------------------------------------------------------------
def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if not _is_engine(m) and m not in ABOVE | ENTRY]
    assert unplaced == [], "add each new module to ENGINE or ABOVE"


def test_import_graph_has_no_cycle():
    # The package's __init__ only re-exports; leave it out (everything imports through it).
    graph = {m: {d for d in deps if d != "convredunet"} for m, deps in GRAPH.items()
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


@pytest.mark.parametrize("modules, forbidden", [
    (sorted(m for m in MODULES if _is_engine(m)), ABOVE | {"convredunet"}),
    (["convredunet.network"], {"convredunet." + m for m in (
        "estimators", "io", "export", "finetune", "distributed", "cli", "_dask_cli")}
     | {"convredunet"}),
    (["convredunet.distributed"], {"convredunet.estimators", "convredunet.cli",
                                   "convredunet._dask_cli", "convredunet"}),
], ids=["engine-imports-nothing-above", "network-below-its-users",
        "distributed-below-the-estimators"])
def test_layers_import_one_way(modules, forbidden):
    """Directly or through other modules (imports inside functions count too)."""
    chains = [chain for module in modules for chain in _chain(module, forbidden)]
    assert chains == []


def test_only_the_command_line_imports_cli():
    importers = sorted(m for m, deps in GRAPH.items() if "convredunet.cli" in deps)
    assert set(importers) <= {"convredunet.cli", "convredunet._dask_cli",
                              "convredunet.__main__"}, importers


# --- the estimators' private members stay theirs -------------------------------------------
def _members(cls):
    """Names a class defines: methods, class attributes, and ``self.x = ...`` in its body."""
    names = set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
    return names


def _estimator_private_members():
    """Private (``_x``, not dunder) members of the estimator classes of estimators.py (those
    deriving from scikit-learn's BaseEstimator there), less the names other modules' own
    classes define (a ``_forward`` of the exported module is its own)."""
    classes = [n for n in TREES["convredunet.estimators"].body if isinstance(n, ast.ClassDef)]
    estimators = set()
    for cls in classes:  # in order: a subclass follows its base
        bases = {ast.unparse(b).rsplit(".", 1)[-1] for b in cls.bases}
        if "BaseEstimator" in bases or bases & estimators:
            estimators.add(cls.name)
    private = {name for cls in classes if cls.name in estimators for name in _members(cls)
               if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))}
    for module, tree in TREES.items():
        if module != "convredunet.estimators":
            for cls in ast.walk(tree):
                if isinstance(cls, ast.ClassDef):
                    private -= _members(cls)
    return estimators, private


def test_no_module_reaches_into_an_estimator():
    estimators, private = _estimator_private_members()
    assert {"ReduNet1D", "ReduNet2D", "ReduNetVector"} <= estimators
    assert len(private) >= 5, private  # the collection itself works
    offenders = []
    for module, tree in TREES.items():
        if module == "convredunet.estimators":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private:
                offenders.append(f"{_where(module, node)}: {ast.unparse(node)}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                    node.func.id in ("getattr", "hasattr", "setattr", "delattr") and \
                    len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and \
                    node.args[1].value in private:
                offenders.append(f"{_where(module, node)}: {ast.unparse(node)}")
    assert offenders == []


# --- array questions are the backend's -------------------------------------------------------
def _backend_free_modules():
    """Every module but backend/ and the torch modules by nature (export, finetune)."""
    return [m for m in MODULES if not m.startswith("convredunet.backend")
            and m not in ("convredunet.export", "convredunet.finetune")]


def _hasattr_detach(node):
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
        node.func.id == "hasattr" and len(node.args) == 2 and \
        isinstance(node.args[1], ast.Constant) and node.args[1].value == "detach"


def _is_torch_call(node):
    return isinstance(node, ast.Call) and (
        isinstance(node.func, ast.Name) and node.func.id == "is_torch"
        or isinstance(node.func, ast.Attribute) and node.func.attr == "is_torch")


def _names_a_backend(node):
    """``backend``, ``x.backend``, ``ws.name``, ``params["backend"]``..."""
    if isinstance(node, ast.Name):
        text = node.id
    elif isinstance(node, ast.Attribute):
        text = node.attr
    elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        text = str(node.slice.value)
    else:
        return False
    return "backend" in text.lower() or "name" in text.lower()


def _backend_name_comparison(node):
    if not isinstance(node, ast.Compare):
        return False
    operands = [node.left] + node.comparators

    def constants(operand):
        items = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else \
            [operand]
        return {i.value for i in items if isinstance(i, ast.Constant)}

    return any(constants(a) & {"torch", "numpy"} for a in operands) and \
        any(_names_a_backend(a) for a in operands)


@pytest.mark.parametrize("rule", [
    _hasattr_detach,
    _is_torch_call,
    _backend_name_comparison,
], ids=["hasattr-detach", "is_torch", "backend-name-comparison"])
def test_no_backend_branches_outside_backend(rule):
    offenders = [f"{_where(m, node)}: {ast.unparse(node)}" for m in _backend_free_modules()
                 for node in ast.walk(TREES[m]) if rule(node)]
    assert offenders == []


def test_the_rules_see_what_they_look_for():
    """Each rule catches a line written the way it forbids."""
    source = ast.parse("hasattr(y, 'detach')\nB.is_torch(x)\nis_torch(x)\n"
                       "backend == 'torch'\nws.name != 'numpy'\nparams['backend'] == 'torch'\n"
                       "'numpy' == self.backend\nbackend in ('torch', 'cuda')\n"
                       "fmt == 'torchscript'\nkind == 'torch'\n")
    nodes = list(ast.walk(source))
    assert sum(map(_hasattr_detach, nodes)) == 1
    assert sum(map(_is_torch_call, nodes)) == 2
    assert sum(map(_backend_name_comparison, nodes)) == 5


# --- nothing global changes at import ---------------------------------------------------------
_IMPORT_SNAPSHOT = """
import importlib, json, os, sys, warnings
modules, third_party = json.loads(sys.argv[1]), json.loads(sys.argv[2])
env = dict(os.environ)
for name in third_party:  # their own warnings filters are not the package's
    try:
        importlib.import_module(name)
    except Exception:
        pass
filters = list(warnings.filters)
for name in modules:
    importlib.import_module(name)
import numpy as np
from convredunet.backend import NumpyBackend
NumpyBackend().rfft(np.ones((4, 8)), 1)  # a first transform (plans made) changes nothing either
import pyfftw.interfaces.cache
changed = {k: [env.get(k), os.environ.get(k)] for k in set(env) | set(os.environ)
           if env.get(k) != os.environ.get(k)}
print(json.dumps({"environment": changed,
                  "filters_added": [repr(f) for f in warnings.filters if f not in filters],
                  "filters_removed": [repr(f) for f in filters if f not in warnings.filters],
                  "pyfftw_interface_cache": pyfftw.interfaces.cache.is_enabled()}))
"""


def _third_party_imports():
    """Top-level modules the package imports at its modules' top level (not in functions)."""
    names = set()
    for tree in TREES.values():
        stack = list(tree.body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue  # runs when called, not at import
            stack.extend(ast.iter_child_nodes(node))
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module)
    return sorted(n for n in names if n.split(".")[0] != "convredunet")


def test_import_changes_no_environment_variable_and_no_warnings_filter():
    """Every module imported, in a fresh interpreter, and a first FFT: no environment
    variable, warnings filter or pyFFTW interface cache is touched."""
    modules = ["convredunet"] + [m for m in MODULES if m not in ENTRY]
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}  # a default once set
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", _IMPORT_SNAPSHOT, json.dumps(modules),
                           json.dumps(_third_party_imports())],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"environment": {}, "filters_added": [], "filters_removed": [],
                      "pyfftw_interface_cache": False}


# --- parameters declared once ----------------------------------------------------------------
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
