"""Write the documentation pages that hold benchmark numbers, from ``bench/results/``.

Nothing here measures anything: every number on the pages it writes is read from a
record of ``bench/results/`` that a benchmark script wrote.

* ``docs/benchmarks.md``: one section per record ``NAME.md`` of ``bench/results/``
  (a one-line caption from :data:`SECTIONS`, the date and machine from ``NAME.json``,
  the record's tables and row notes copied, and the figures linked where they are,
  in ``bench/results/``: no figure is copied), then the records without a Markdown
  report (JSON, logs), linked with a caption.
* ``README.md``, between ``<!-- results:start -->`` and ``<!-- results:end -->``: the
  table of real-signal results from ``ucr.json`` (per set: ReduNet1D()'s test accuracy,
  MiniRocket's, the 1-NN's and the fit-time ratio); and between
  ``<!-- quickstart:start -->`` and ``<!-- quickstart:end -->``: the timing of the Python
  quick start from ``quickstart.json``.

The output depends only on the records, so a second run changes nothing. A record
section whose keys are missing is left out (a set missing from ``ucr.json`` is simply
not in the table); a record ``NAME.md`` without an entry in :data:`SECTIONS` gets a
section with a plain caption, so a new benchmark's report is never dropped.

Usage: ``python3 bench/docs.py [--root DIR] [--check]``. ``--root``: the checkout to
write in (default: this script's). ``--check``: write nothing, exit 1 if a page is not
what the records give.
"""
import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Records with a Markdown report, in page order: (name, title, caption, script, figures).
#: The caption says what the record shows, in one line.
SECTIONS = [
    ("ucr", "Real signals: ReduNet1D() beside MiniRocket and a 1-NN",
     "Test accuracy, fit and predict times of ReduNet1D() with its defaults, MiniRocket "
     "and a 1-NN (Euclidean) on UCR/UEA sets and MNIST-1D, one thread, and the "
     "predictions changed by cyclic shifts of the test signals.",
     "bench/ucr.py", ["ucr.png"]),
    ("ucr_sweep", "How the ReduNet1D defaults were chosen",
     "Validation accuracy (cross-validation inside the training splits; no test split "
     "read) of the 25 best candidate configurations of ReduNet1D, with each one's "
     "slowest fit against MiniRocket's.",
     "bench/sweep_ucr.py", []),
    ("accuracy", "Accuracy on MNIST-1D, MNIST translation and MNIST rotation",
     "Test accuracy of each configuration listed under the table (its parameters as "
     "run), with both classifiers, on cyclically shifted test signals, and of linear SVM "
     "and 5-NN references.",
     "bench/accuracy.py", ["depth.png", "cosine_mnist1d.png"]),
    ("construction", "Building one layer: spectral, dense spatial and per-frequency loop",
     "Seconds to build one layer's operators and rates by the spectral engine, the dense "
     "block-circulant reference and a per-frequency loop, by channels, length and "
     "threads.",
     "bench/construction.py", ["construction.png"]),
    ("transform", "Applying a layer",
     "Seconds to apply one layer per 1,000 samples and GFLOP/s against a float64 matmul "
     "measured in the same run; peak memory of fitting the 25-layer 2D network.",
     "bench/transform.py", []),
    ("stages", "Fit and predict, stage by stage",
     "Seconds of each stage of ReduNet1D()'s and ReduNet1D(n_layers=1)'s fit and predict "
     "on the real-signal sets, against each stage's flops at a complex matrix-product rate "
     "measured in the same run.",
     "bench/stages.py", []),
    ("export_speed", "Exported modules against net.predict",
     "Milliseconds per signal of the exported PyTorch modules and the ONNX file against "
     "net.predict, one thread, for the networks named in the rows, and the seconds of "
     "one fine-tuning epoch against net.predict of the same signals.",
     "bench/export_speed.py", []),
    ("model_size", "Model file sizes",
     "Bytes of the model files and exported modules of the rows' networks, and what a "
     "float32 model file changes, for the networks named in the rows.",
     "bench/model_size.py", []),
    ("scale", "Scale-out with Dask",
     "Samples per second of fit and transform in process and on a local Dask cluster, "
     "peak memory of the client and the workers, and the fitted cost model's estimate "
     "for 10^8 signals.",
     "bench/scale.py", ["scale.png"]),
]

#: Records without a Markdown report: (file, caption, script).
RECORDS = [
    ("quickstart.json", "Seconds of each statement of the README's Python quick start, run "
     "as written.", "bench/quickstart.py"),
    ("mnist1d_sweep.json", "Validation accuracy of every point of the MNIST-1D sweep (3200 "
     "training signals fit, 800 score).", "bench/sweep_mnist1d.py"),
    ("mnist1d_ensemble.json", "Validation accuracy of ensembles of random liftings on "
     "MNIST-1D against one wider lifting.", "bench/ensemble_mnist1d.py"),
    ("mnist_validation.json", "5-fold cross-validation inside the 10 training digits per "
     "class: MNIST translation (ReduNet2D) and rotation (polar ReduNet1D) candidates.",
     "bench/validate_mnist.py"),
    ("scale_agreement.json", "Rates, features and predictions of a Dask fit on 2 workers "
     "against the in-process fit, for a 12-layer, 32-channel ReduNet1D on MNIST-1D.",
     "bench/scale.py --agreement"),
    ("export_mnist1d_train.log", "Test accuracy of exported modules truncated to K-tap "
     "kernels and distilled, and of fine-tuning on labels, for a 128-channel ReduNet1D "
     "on MNIST-1D.", "bench/export_mnist1d.py"),
    ("export_mnist1d_defaults.log", "Milliseconds per signal of each export mode "
     "(fft, direct, auto; float32, float64) against net.predict.",
     "bench/export_mnist1d.py"),
]

MARKERS = {"results": ("<!-- results:start -->", "<!-- results:end -->"),
           "quickstart": ("<!-- quickstart:start -->", "<!-- quickstart:end -->")}
NOTICE = "<!-- written by bench/docs.py from bench/results/: edit that script, not this text -->"


# --------------------------------------------------------------------------------------------
# reading records
# --------------------------------------------------------------------------------------------
def _json(path):
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None


def _machine_line(record, json_name):
    """``Measured DATE on CPU, N cores (`bench/results/NAME.json`).`` or a plain source."""
    machine = record.get("machine") if isinstance(record, dict) else None
    source = f"[`bench/results/{json_name}`](../bench/results/{json_name})"
    if not isinstance(machine, dict):
        return f"Record: {source}."
    parts = []
    if machine.get("date"):
        parts.append(str(machine["date"])[:10])
    cpu = machine.get("cpu_model")
    cores = machine.get("cores_available", machine.get("cpu_count"))
    if cpu:
        parts.append(f"{cpu}, {cores} core{'s' if cores != 1 else ''}" if cores else str(cpu))
    if machine.get("convredunet"):
        parts.append(f"convredunet {machine['convredunet']}")
    return f"Measured {'; '.join(parts)} ({source})." if parts else f"Record: {source}."


def _blocks(markdown):
    """The tables and bullet lists of a Markdown report, each as one string."""
    blocks, current, kind = [], [], None
    for line in markdown.splitlines():
        line_kind = ("table" if line.startswith("|") else
                     "list" if line.startswith("- ") else
                     kind if kind == "list" and line.startswith("  ") and line.strip() else
                     None)
        if line_kind != kind and current:
            blocks.append("\n".join(current))
            current = []
        kind = line_kind
        if kind is not None:
            current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


# --------------------------------------------------------------------------------------------
# docs/benchmarks.md
# --------------------------------------------------------------------------------------------
def _anchor(title):
    slug = re.sub(r"[^\w\- ]", "", title.lower()).strip()
    return re.sub(r" ", "-", slug)


def benchmarks_page(results):
    """The text of ``docs/benchmarks.md`` for the records in ``results``."""
    known = {name for name, *_ in SECTIONS}
    sections = [s for s in SECTIONS if (results / f"{s[0]}.md").exists()]
    sections += [(p.stem, f"{p.stem}", f"Report of `bench/results/{p.name}`.",
                  None, []) for p in sorted(results.glob("*.md")) if p.stem not in known]
    figures_used = {f for *_, figures in sections for f in figures}
    records = [r for r in RECORDS if (results / r[0]).exists()]
    described = {r[0] for r in records} | {f"{s[0]}.json" for s in sections}
    records += [(p.name, f"Record `{p.name}`.", None) for p in sorted(results.iterdir())
                if p.suffix in (".json", ".log") and p.name not in described]
    others = [p.name for p in sorted(results.glob("*.png")) if p.name not in figures_used]

    out = ["# Benchmarks", "", NOTICE, "",
           "Every table on this page is copied from a report in `bench/results/` by "
           "`python3 bench/docs.py`; each section names the script that wrote the report, "
           "its JSON record (the machine, its load and every number) and its figures. "
           "CONTRIBUTING.md says how to run the scripts.", ""]
    out += [f"- [{title}](#{_anchor(title)})" for _, title, *_ in sections]
    out += ["- [Other records](#other-records)", ""]
    for name, title, caption, script, figures in sections:
        out += [f"## {title}", "", caption, ""]
        line = _machine_line(_json(results / f"{name}.json"), f"{name}.json")
        report = f"[`bench/results/{name}.md`](../bench/results/{name}.md)"
        how = f" Written by `python3 {script}`;" if script else ""
        out += [f"{line}{how} full report: {report}.", ""]
        for block in _blocks((results / f"{name}.md").read_text()):
            out += [block, ""]
        for figure in figures:
            if (results / figure).exists():
                out += [f"![{figure}](../bench/results/{figure})", ""]
    out += ["## Other records", ""]
    for file_name, caption, script in records:
        how = f" (`python3 {script}`)" if script else ""
        out.append(f"- [`bench/results/{file_name}`](../bench/results/{file_name}){how}: "
                   f"{caption}")
    for figure in others:
        out.append(f"- [`bench/results/{figure}`](../bench/results/{figure}): figure.")
    return "\n".join(out).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# README.md: the results table and the quick start's timing
# --------------------------------------------------------------------------------------------
def _held_out(results, rows):
    """Sets marked held out: by the row (``"held_out"``) or by the report's label."""
    report = results / "ucr.md"
    labelled = set(re.findall(r"^\| (\S+) \(held out\)", report.read_text(), re.M)
                   ) if report.exists() else set()
    return {r["set"] for r in rows if r.get("held_out") or r["set"] in labelled}


def ucr_rows(record, held_out=()):
    """``[(set label, train shape, ReduNet, MiniRocket, 1-NN, fit ratio)]`` as printed."""
    out = []
    for r in record.get("rows", []):
        try:
            accs = r["redunet"]["accuracy"]
            cells = (f"{r['set']}{' (held out)' if r['set'] in held_out else ''}",
                     " × ".join(str(n) for n in r["train_shape"]),
                     f"{r['redunet']['accuracy_mean']:.3f} [{min(accs):.3f}–{max(accs):.3f}]",
                     f"{r['minirocket']['accuracy']:.3f}",
                     f"{r['nn1_ed']['accuracy']:.3f}",
                     f"{r['fit_ratio']:.2f}")
        except (KeyError, TypeError, ValueError):
            continue  # a row without these numbers is not shown
        out.append(cells)
    return out


def results_table(results):
    """The README's results block (between the markers) from ``ucr.json``."""
    record = _json(results / "ucr.json")
    if not record or not record.get("rows"):
        return "No real-signal record (`bench/results/ucr.json`) yet: `python3 bench/ucr.py`."
    rows = record["rows"]
    held_out = _held_out(results, rows)
    body = ucr_rows(record, held_out)
    machine = record.get("machine", {})
    threads = machine.get("threads")
    when = ", ".join(str(x) for x in (
        str(machine.get("date", ""))[:10],
        f"{machine.get('cpu_model')}" if machine.get("cpu_model") else "",
        f"{threads} thread{'s' if threads != 1 else ''}" if threads else "") if x)
    lines = [f"Test accuracy on each set's test split ({when}; `python3 bench/ucr.py`, "
             "[`bench/results/ucr.json`](bench/results/ucr.json)). ReduNet1D() with its "
             "defaults: mean [min–max] over lifting seeds 0–2. Fit ratio: ReduNet1D()'s "
             "fastest fit over MiniRocket's.", "",
             "| set | train shape | ReduNet1D() | MiniRocket | 1-NN | fit ratio |",
             "|---|---|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    suite = [s for s in record.get("targets", {}) if s != "mean"]
    suite = [r for r in rows if r["set"] in suite] if suite else \
        [r for r in rows if r["set"] not in held_out]
    suite = [r for r in suite if ucr_rows({"rows": [r]})]  # rows with their numbers
    try:
        means = [sum(f(r) for r in suite) / len(suite) for f in (
            lambda r: r["redunet"]["accuracy_mean"], lambda r: r["minirocket"]["accuracy"],
            lambda r: r["nn1_ed"]["accuracy"])]
        lines.append(f"| mean of {', '.join(r['set'] for r in suite)} | | {means[0]:.3f} | "
                     f"{means[1]:.3f} | {means[2]:.3f} | |")
    except (KeyError, TypeError, ZeroDivisionError):
        pass
    checked = [r["invariance"] for r in rows if isinstance(r.get("invariance"), dict)]
    if checked:
        changed = sum(c.get("changed", 0) for c in checked)
        total = sum(c.get("predictions", 0) for c in checked)
        lines += ["", f"Predictions of ReduNet1D() changed by a cyclic shift of the test "
                      f"signal: {changed:,} of {total:,} checked (every shift of each "
                      "checked signal)."]
    if held_out:
        lines += ["", f"Marked held out by `bench/ucr.py` and left out of the mean: "
                      f"{', '.join(sorted(held_out))}."]
    return "\n".join(lines)


_STATEMENTS = [  # (pattern in the statement, what it is), first match wins
    (r"^import torch", "importing torch"),
    (r"load_mnist1d\(\)", "loading MNIST-1D"),
    (r"\.fit\(", "the fit"),
    (r"\.score\(", "the score"),
    (r"assert_shift_invariant\(", "the shift check"),
    (r"fine_tune\(", "fine-tuning"),
    (r"to_torch\(|module\.predict\(", "the export and its predictions"),
    (r"\.save\(|load\(", "saving and loading"),
]


def quickstart_sentence(results):
    """The README's sentence after the Python quick start, from ``quickstart.json``."""
    record = _json(results / "quickstart.json")
    if not record or "total_seconds" not in record:
        return "Timing: no record yet (`python3 bench/quickstart.py`)."
    seconds = {}
    for s in record.get("statements", []):
        for pattern, what in _STATEMENTS:
            if re.search(pattern, s["code"]):
                seconds[what] = seconds.get(what, 0.0) + s["seconds"]
                break
    machine = record.get("machine", {})
    threads = record.get("threads")
    load = record.get("load_average_start")
    setting = "every core" if threads is None else f"{threads} thread(s)"
    where = ", ".join(x for x in (
        machine.get("cpu_model"),
        f"{machine.get('cores_available')} cores" if machine.get("cores_available") else "",
        setting, f"load average {load[0]:.1f} at the start" if load else "") if x)
    parts = [f"{what} {s:.1f} s" for what, s in seconds.items() if s >= 0.05]
    text = (f"The block runs as written in {record['total_seconds']:.0f} s ({where}; "
            "`python3 bench/quickstart.py`, which runs it statement by statement, "
            "[`bench/results/quickstart.json`](bench/results/quickstart.json))"
            + (": " + ", ".join(parts) if parts else "") + ".")
    tune = record.get("fine_tune") or {}
    history = tune.get("history") or []
    best = tune.get("best_epoch")
    if history and best is not None and best < len(history):
        accs = ", ".join(f"{h['validation_accuracy']:.4f}" for h in history)
        text += (f" `fine_tune` kept epoch {best} of {len(history) - 1}: validation "
                 f"accuracy on the 400 held-out signals {accs} from the start (epoch 0) on.")
    if record.get("model_npz_bytes"):
        text += f" `model.npz`: {record['model_npz_bytes'] / 1e6:.1f} MB."
    return text


def replace_between(text, key, content):
    start, end = MARKERS[key]
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"README.md must hold exactly one {start} ... {end} pair")
    return pattern.sub(lambda _: f"{start}\n{NOTICE}\n{content}\n{end}", text)


def readme(text, results):
    text = replace_between(text, "results", results_table(results))
    return replace_between(text, "quickstart", quickstart_sentence(results))


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def pages(root):
    """``{path: text}`` of every page this script writes, from ``root``'s records."""
    root = Path(root)
    results = root / "bench" / "results"
    return {root / "docs" / "benchmarks.md": benchmarks_page(results),
            root / "README.md": readme((root / "README.md").read_text(), results)}


def _write(path, text):
    """Write under a temporary name beside ``path``, then rename: never half a page."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT), help="the checkout to write in")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a page differs from the records")
    args = parser.parse_args(argv)
    stale = []
    for path, text in pages(args.root).items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            _write(path, text)
    for path in stale:
        print(f"{'differs' if args.check else 'wrote'}: {path}")
    if not stale:
        print("pages up to date")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
