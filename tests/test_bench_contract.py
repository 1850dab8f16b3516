"""The contract of the bench/ scripts: one command line, convredunet's public names only.

Every script run as a program takes the options of ``harness.arguments``: ``--quick``
(a reduced run), ``--out DIR`` (a folder) and ``--threads N`` (the thread setting it runs
under), and defines none of them itself. No script imports a private name of
convredunet (a module or a name starting with ``_``), and the names it imports from a
module with an ``__all__`` are in that ``__all__``. The few lines of the library the
scripts copy instead of importing private helpers are checked against the library here.
"""
import ast
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import BENCH, load_bench

ROOT = Path(BENCH).parent
PACKAGE = ROOT / "convredunet"
SCRIPTS = sorted(Path(BENCH).glob("*.py"))
#: Scripts with a command line that is not a benchmark's: docs.py measures nothing, it
#: writes the documentation pages from bench/results/ (options --root and --check).
NOT_BENCHMARKS = {"docs.py"}
COMMON = ("--quick", "--out", "--threads")
#: Names a script still reads from a module without ``__all__``, each with its reason
#: (a library change would make them public or give an equivalent).
NOT_YET_PUBLIC = {
    "convredunet.spatial.check_dense_size":
        "construction.py skips a dense-reference cell that would exceed the reference's "
        "size limit before timing it; no public call checks the size without building",
}


def _tree(path):
    return ast.parse(path.read_text(), filename=str(path))


def _is_program(tree):
    """A script with a ``main`` function or an ``if __name__ == "__main__"`` block."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            return True
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return True
    return False


PROGRAMS = [p.name for p in SCRIPTS if _is_program(_tree(p)) and p.name not in NOT_BENCHMARKS]


def test_the_programs_are_found():
    assert set(PROGRAMS) >= {
        "accuracy.py", "construction.py", "ensemble_mnist1d.py", "export_mnist1d.py",
        "export_speed.py", "gpu.py", "model_size.py", "quickstart.py", "scale.py",
        "stages.py", "sweep_mnist1d.py", "sweep_ucr.py", "transform.py", "ucr.py",
        "validate_mnist.py"}


@pytest.mark.parametrize("name", PROGRAMS)
def test_every_program_takes_the_common_options_from_harness(name):
    tree = _tree(Path(BENCH) / name)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    assert any(ast.unparse(c.func) == "harness.arguments" for c in calls), \
        f"bench/{name} does not build its parser with harness.arguments"
    assert not any(ast.unparse(c.func) == "argparse.ArgumentParser" for c in calls)
    own = [c.args[0].value for c in calls
           if ast.unparse(c.func).endswith(".add_argument") and c.args
           and isinstance(c.args[0], ast.Constant)]
    assert not set(own) & set(COMMON), \
        f"bench/{name} defines {sorted(set(own) & set(COMMON))} itself"


@pytest.mark.slow  # a subprocess per script (imports torch): about 25 s in all
@pytest.mark.parametrize("name", PROGRAMS)
def test_help_lists_the_common_options(name):
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(Path(BENCH) / name), "--help"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for option in COMMON:
        assert option in done.stdout, f"bench/{name} --help does not list {option}"
    assert "default" in done.stdout.split("--threads", 2)[-1]


# --- public names only ------------------------------------------------------------------------
def _module_file(dotted):
    """The source file of a convredunet module, or None when it is not one."""
    path = ROOT.joinpath(*dotted.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _all(dotted):
    """The module's ``__all__`` (a set), or None when it has none."""
    for node in _tree(_module_file(dotted)).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__"
                                                for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


def _private(dotted):
    return any(part.startswith("_") for part in dotted.split("."))


def _problems(tree, where):
    """Private or unexported convredunet names that ``tree`` imports or reads."""
    problems, modules = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "convredunet":
                    continue
                if _private(alias.name):
                    problems.append(f"{where}: import {alias.name}")
                modules[alias.asname or alias.name.split(".")[0]] = \
                    alias.name if alias.asname else "convredunet"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "convredunet":
            if _private(node.module):
                problems.append(f"{where}: from {node.module} import ...")
                continue
            exported = _all(node.module)
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                if alias.name.startswith("_") and alias.name != "__version__":
                    problems.append(f"{where}: from {node.module} import {alias.name}")
                elif _module_file(name) is not None:  # a public submodule
                    modules[alias.asname or alias.name] = name
                elif exported is None:
                    if name not in NOT_YET_PUBLIC:
                        problems.append(f"{where}: {name}: {node.module} has no __all__")
                elif alias.name not in exported:
                    problems.append(f"{where}: {name} is not in {node.module}.__all__")
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        parts = ast.unparse(node).split(".")
        if not all(part.isidentifier() for part in parts) or parts[0] not in modules:
            continue  # not a chain of names from a convredunet module
        module = modules[parts[0]]
        for name in parts[1:]:
            if _module_file(f"{module}.{name}") is not None:  # a submodule
                module = f"{module}.{name}"
                if name.startswith("_"):
                    problems.append(f"{where}: {module}")
                    break
                continue
            exported = _all(module)
            if (name.startswith("_") and name != "__version__") or \
                    (exported is None and f"{module}.{name}" not in NOT_YET_PUBLIC) or \
                    (exported is not None and name not in exported):
                problems.append(f"{where}: {module}.{name} is not public")
            break
    # Code the script runs in a fresh process (a string handed to ``python -c``).
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and "import convredunet" in node.value:
            try:
                inner = ast.parse(node.value)
            except SyntaxError:
                continue
            problems += _problems(inner, f"{where} (code in a string)")
    return problems


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_scripts_use_public_names_only(path):
    assert _problems(_tree(path), f"bench/{path.name}") == []


def test_the_check_sees_private_names():
    source = ("import convredunet._threads\n"
              "from convredunet._files import atomic_path\n"
              "from convredunet.finetune import _split\n"
              "from convredunet.network import lifting_channels\n"
              "from convredunet.subspace import spectrum_distances\n"
              "import convredunet as crn\n"
              "crn._threads.thread_limits\n"
              "crn.ReduNet1D, crn.subspace.class_subspaces, crn.spatial.dense_gram\n"
              "from convredunet import datasets\n"
              "datasets.load_mnist1d, datasets._cache\n"
              "CODE = 'import convredunet\\nfrom convredunet._memory import x'\n")
    found = _problems(ast.parse(source), "x")
    assert len(found) == 9, found
    assert "x: convredunet.network.lifting_channels: convredunet.network has no __all__" \
        in found


# --- what the scripts copy instead of importing ----------------------------------------------
def test_per_class_split_is_fine_tunes():
    from convredunet.finetune import _split  # the library's own, private

    protocol = load_bench("protocol.py")
    rng = np.random.default_rng(0)
    for labels in (np.arange(40) % 4, rng.integers(0, 7, 333), np.repeat([3, 1, 2], [5, 50, 9])):
        for fraction, seed in ((0.1, 0), (0.1, 1), (0.25, 7), (0.5, 3)):
            ours = protocol.per_class_split(labels, fraction, seed)
            theirs = _split(len(labels), labels, fraction, seed)
            for a, b in zip(ours, theirs):
                np.testing.assert_array_equal(a, b)


def test_lifted_channels_is_the_estimators_rule():
    from convredunet.network import lifting_channels  # the library's own, not exported

    protocol = load_bench("protocol.py")
    for shape in [(1,), (24,), (40,), (150,), (427,), (512,), (513,), (1460,), (4096,),
                  (10 ** 6,), (28, 28), (15, 200)]:
        for n_channels in ("auto", 8, 300):
            assert protocol.lifted_channels(n_channels, shape) == \
                lifting_channels(n_channels, shape), (n_channels, shape)


# --- harness ---------------------------------------------------------------------------------
def test_arguments_parse_the_common_options(tmp_path):
    harness = load_bench("harness.py")
    args = harness.arguments("x").parse_args([])
    assert (args.quick, args.out, args.threads) == (False, str(harness.RESULTS), 1)
    args = harness.arguments("x").parse_args(["--quick", "--out", str(tmp_path / "new"),
                                              "--threads", "3"])
    assert (args.quick, args.out, args.threads) == (True, str(tmp_path / "new"), 3)
    assert not (tmp_path / "new").exists()  # created by the script when it writes
    assert harness.arguments("x", threads_default=None).parse_args([]).threads is None
    several = harness.arguments("x", several_threads=True, threads_default=(1, 2))
    assert several.parse_args([]).threads == (1, 2)
    assert several.parse_args(["--threads", "4,1"]).threads == (4, 1)


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads must be a positive integer, got '0'"),
    (["--threads", "two"], "--threads must be a positive integer, got 'two'"),
    (["--out", "record.json"], "--out must be a folder"),
])
def test_arguments_refuse_bad_values(argv, message, capsys):
    harness = load_bench("harness.py")
    with pytest.raises(SystemExit):
        harness.arguments("x").parse_args(argv)
    assert message in capsys.readouterr().err


def test_out_must_not_be_a_file(tmp_path, capsys):
    harness = load_bench("harness.py")
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        harness.arguments("x").parse_args(["--out", str(tmp_path / "file")])
    assert "--out must be a folder, got the file" in capsys.readouterr().err
    several = harness.arguments("x", several_threads=True, threads_default=(1, 2))
    with pytest.raises(SystemExit):
        several.parse_args(["--threads", "1,0"])
    assert "--threads must be comma-separated positive integers" in capsys.readouterr().err


def test_thread_setting(tmp_path):
    import convredunet

    harness = load_bench("harness.py")
    before = convredunet.get_num_threads()
    with harness.thread_setting(3):
        assert convredunet.get_num_threads() == 3
    with harness.thread_setting(None):
        assert convredunet.get_num_threads() == before
    assert convredunet.get_num_threads() == before


def test_writes_are_whole_or_nothing(tmp_path):
    harness = load_bench("harness.py")
    path = harness.write_json(tmp_path / "r.json", {"a": np.float64(1.5), "b": np.arange(2)})
    assert path.read_text() == '{\n "a": 1.5,\n "b": [\n  0,\n  1\n ]\n}\n'
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(TypeError):
        harness.write_json(tmp_path / "r.json", {"a": object()})
    with pytest.raises(RuntimeError):
        harness._replace_when_done(tmp_path / "r.json", _fail_after_writing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    assert '"a": 1.5' in path.read_text()


def _fail_after_writing(tmp):
    Path(tmp).write_text("half")
    raise RuntimeError("interrupted")
