"""Run the README's Python quick start as written and time it, line by line.

The block under "## Quick start (Python)" in README.md is taken verbatim and run
statement by statement in a fresh namespace, in a temporary folder (it writes
``model.npz``), at the thread count given (``--threads``, default: convredunet's
default, every core); each statement's wall time is recorded with the machine and
its load. ``bench/docs.py`` writes the README's sentence on this run from the record.
The quick start is a short run already (about 20 s): ``--quick`` runs it the same and
marks the record ``"quick": true``.

Usage: ``python3 bench/quickstart.py [--quick] [--threads N] [--out DIR]``; writes
``quickstart.json``.
"""
import ast
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import harness  # bench/harness.py: this script's folder is first on sys.path

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart_source(readme=README):
    """The README's first ```python block after "## Quick start (Python)"."""
    text = Path(readme).read_text()
    section = text[text.index("## Quick start (Python)"):]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    if match is None:
        raise ValueError(f"{readme} has no python block under '## Quick start (Python)'")
    return match.group(1)


def run(source, threads=None):
    """Execute ``source`` statement by statement; ``[(first line, seconds)]`` and the total.

    ``threads``: ``convredunet.num_threads`` for the run (None: the library's default).
    """
    tree = ast.parse(source)
    lines = source.splitlines()
    namespace = {"__name__": "__quickstart__"}
    rows = []
    started = time.perf_counter()
    with harness.thread_setting(threads):
        for node in tree.body:
            code = compile(ast.Module([node], type_ignores=[]), "<README quick start>", "exec")
            t0 = time.perf_counter()
            exec(code, namespace)
            rows.append((lines[node.lineno - 1].strip(), time.perf_counter() - t0))
    return rows, time.perf_counter() - started, namespace


def main(argv=None):
    parser = harness.arguments("Time the README's Python quick start as written.",
                               quick_help="the same run (the quick start is short already)",
                               threads_default=None,
                               threads_help="the quick start as a user runs it, as the "
                                            "recorded quickstart.json ran")
    args = parser.parse_args(argv)
    out_dir = harness.output_dir(args.out)
    source = quickstart_source()
    load_before = harness.load_average()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            rows, total, namespace = run(source, args.threads)
            size = os.path.getsize("model.npz")
        finally:
            os.chdir(cwd)
    small = namespace["small"]
    record = {
        "machine": harness.machine_info(), "load_average_start": load_before,
        "load_average_end": harness.load_average(), "threads": args.threads,
        "quick": args.quick,
        "total_seconds": total, "statements": [{"code": c, "seconds": s} for c, s in rows],
        "model_npz_bytes": size,
        "fine_tune": {"best_epoch": small.fine_tune_best_epoch,
                      "history": small.fine_tune_history},
    }
    harness.write_json(out_dir / "quickstart.json", record)
    print(harness.text_table(["statement", "seconds"],
                             [[c[:70], f"{s:.1f}"] for c, s in rows]))
    print(f"total {total:.0f} s (load average {load_before} -> {harness.load_average()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
