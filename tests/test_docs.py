"""The pages written from bench/results/ (bench/docs.py): their numbers, their links, their figures."""
import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import load_bench

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _copy(tmp_path):
    """README, docs/ and bench/results/ of the checkout, in ``tmp_path``."""
    shutil.copy2(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(RESULTS, tmp_path / "bench" / "results")
    return tmp_path


def _readme_table(text):
    block = text[text.index("<!-- results:start -->"):text.index("<!-- results:end -->")]
    rows = [line for line in block.splitlines() if line.startswith("| ")][1:]  # no header
    return {cells[0]: cells[1:] for cells in
            ([c.strip() for c in row.strip("|").split("|")] for row in rows)}


def test_the_readme_table_holds_the_numbers_of_ucr_json(tmp_path):
    docs = load_bench("docs.py")
    root = _copy(tmp_path)
    assert docs.main(["--root", str(root)]) == 0
    table = _readme_table((root / "README.md").read_text())
    record = json.loads((RESULTS / "ucr.json").read_text())
    assert record["rows"]
    for row in record["rows"]:
        label = next(k for k in table if k == row["set"] or k.startswith(row["set"] + " ("))
        shape, redunet, minirocket, nn1, ratio = table[label]
        accs = row["redunet"]["accuracy"]
        assert shape == " × ".join(str(n) for n in row["train_shape"])
        assert redunet == (f"{row['redunet']['accuracy_mean']:.3f} "
                           f"[{min(accs):.3f}–{max(accs):.3f}]")
        assert minirocket == f"{row['minirocket']['accuracy']:.3f}"
        assert nn1 == f"{row['nn1_ed']['accuracy']:.3f}"
        assert ratio == f"{row['fit_ratio']:.2f}"
    # A second run changes nothing.
    before = {p: p.read_text() for p in (root / "README.md", root / "docs" / "benchmarks.md")}
    assert docs.main(["--root", str(root), "--check"]) == 0
    assert {p: p.read_text() for p in before} == before


def test_a_record_without_a_set_or_without_sections_still_gives_pages(tmp_path):
    docs = load_bench("docs.py")
    root = _copy(tmp_path)
    results = root / "bench" / "results"
    record = json.loads((results / "ucr.json").read_text())
    kept = record["rows"][:2]
    record["rows"] = kept + [{"set": "Broken", "redunet": {}}]  # a row without its numbers
    record.pop("targets", None)
    (results / "ucr.json").write_text(json.dumps(record))
    (results / "ucr.md").unlink()  # no report: no "(held out)" labels, no ucr section
    (results / "model_size.json").unlink()
    assert docs.main(["--root", str(root)]) == 0
    table = _readme_table((root / "README.md").read_text())
    assert [k for k in table if not k.startswith("mean")] == [r["set"] for r in kept]
    page = (root / "docs" / "benchmarks.md").read_text()
    assert "## Real signals" not in page and "## Model file sizes" in page


def test_the_committed_pages_are_those_the_records_give():
    docs = load_bench("docs.py")
    stale = [str(path.relative_to(ROOT)) for path, text in docs.pages(ROOT).items()
             if path.read_text() != text]
    assert not stale, f"{stale} differ from bench/results/: run python3 bench/docs.py"


def _anchors(page):
    """The anchors GitHub gives the headings of a Markdown page."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_linked_file_and_section_exists(page):
    missing = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # a web address
        name, _, anchor = target.partition("#")
        path = (page.parent / name).resolve() if name else page
        if not path.exists() or (anchor and path.suffix == ".md"
                                 and anchor not in _anchors(path)):
            missing.append(target)
    assert not missing, f"{page.name} links files or sections that do not exist: {missing}"


def test_figures_are_stored_once():
    def digest(path):
        return hashlib.sha256(path.read_bytes()).hexdigest()

    results = {digest(p): p.name for p in RESULTS.glob("*.png")}
    copies = [f"docs/{p.name} = bench/results/{results[digest(p)]}"
              for p in sorted((ROOT / "docs").rglob("*.png")) if digest(p) in results]
    assert not copies, copies
