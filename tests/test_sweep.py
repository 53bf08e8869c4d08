"""`aidmp sweep` and `aidmp report`: a tiny sweep on the in-process engine, run twice (the
second call redoes nothing), a failing run recorded while the others finish, a bad sweep
file answered with its lines, and the report opened in headless Chromium."""

from __future__ import annotations

import csv
import html
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from aidmp.simulations.sweep import ERROR_NAME, OPTIONS_NAME, SUMMARY_NAME
from aidmp.simulations.sweep_spec import load_sweep
from tests.headless_chromium import Page, find_chromium
from tests.inprocess_cli import aidmp

TINY = """\
base: {task: breast-cancer, institutions: 3, rounds: 2}
grid: {dp-epsilon: [1, .inf], strategy: [fedavg, fedprox]}
seeds: [0]
"""


def _sweep(tmp: Path, text: str, name: str = "sweep") -> tuple[Path, Path]:
    spec = tmp / f"{name}.yaml"
    spec.write_text(text)
    return spec, tmp / name


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The 2 x 2 sweep, run once; its first call's output."""
    spec, out = _sweep(tmp_path_factory.mktemp("tiny"), TINY)
    result = aidmp("sweep", str(spec), "--out", str(out), "--engine", "inprocess")
    assert result.returncode == 0, result.stdout + result.stderr
    return spec, out, result.stdout


def _summaries(out: Path) -> dict[str, Path]:
    return {p.parent.name: p for p in (out / "runs").glob(f"*/{SUMMARY_NAME}")}


def test_a_sweep_run_twice_redoes_nothing(tiny_sweep: tuple[Path, Path, str]) -> None:
    spec, out, first = tiny_sweep
    assert "ran 4 run(s) (0 failed), 0 already done" in first
    summaries = _summaries(out)
    assert len(summaries) == 4
    # Every grid point, with its options: ε = ∞ ran without DP, ε = 1 spent at most 1.
    for path in summaries.values():
        options = json.loads((path.parent / OPTIONS_NAME).read_text())["options"]
        summary = json.loads(path.read_text())
        assert summary["strategy"] == options["strategy"]
        assert summary["rounds"] == 2 and summary["institutions"] == 3
        if options["dp-epsilon"] == "inf":
            assert summary["privacy"]["dp"] is False
        else:
            assert summary["privacy"]["dp"] is True
            assert 0 < max(summary["privacy"]["epsilon_by_institution"].values()) <= 1.0
    stamps = {name: p.stat().st_mtime_ns for name, p in summaries.items()}

    again = aidmp("sweep", str(spec), "--out", str(out), "--engine", "inprocess")

    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 already done, 0 to run" in again.stdout
    assert "ran 0 run(s) (0 failed), 4 already done" in again.stdout
    assert {name: p.stat().st_mtime_ns for name, p in _summaries(out).items()} == stamps
    # The results have one row per run, options then final figures, in CSV and Parquet.
    rows = list(csv.DictReader((out / "results.csv").open()))
    frame = pd.read_parquet(out / "results.parquet")
    assert len(rows) == len(frame) == 4
    assert {r["status"] for r in rows} == {"done"}
    assert sorted((r["dp-epsilon"], r["strategy"]) for r in rows) == [
        ("1.0", "fedavg"), ("1.0", "fedprox"), ("inf", "fedavg"), ("inf", "fedprox")
    ]  # fmt: skip
    assert math.isinf(frame["dp-epsilon"].max())
    for row in rows:
        summary = json.loads(summaries[row["id"]].read_text())
        assert float(row["final_accuracy"]) == pytest.approx(summary["final"]["accuracy"])


def test_a_failed_run_is_recorded_and_the_others_finish(tmp_path: Path) -> None:
    # 1,000 institutions cannot all get rows of breast-cancer's 455: that run fails when it
    # starts (the sweep file itself is valid), the other one finishes.
    spec, out = _sweep(
        tmp_path,
        "base: {task: breast-cancer, rounds: 1, dp-epsilon: .inf}\n"
        "grid: {institutions: [1000, 3]}\nseeds: [0]\n",
    )
    result = aidmp("sweep", str(spec), "--out", str(out), "--engine", "inprocess")

    assert result.returncode == 1, result.stdout + result.stderr
    assert "ran 2 run(s) (1 failed), 0 already done" in result.stdout
    folders = {json.loads((p / OPTIONS_NAME).read_text())["options"]["institutions"]: p
               for p in (out / "runs").iterdir()}  # fmt: skip
    assert (folders[3] / SUMMARY_NAME).is_file()
    assert not (folders[1000] / SUMMARY_NAME).exists()
    error = json.loads((folders[1000] / ERROR_NAME).read_text())["error"]
    assert "institution" in error
    rows = {int(r["institutions"]): r for r in csv.DictReader((out / "results.csv").open())}
    assert rows[1000]["status"] == "failed" and rows[1000]["error"] == error
    assert rows[1000]["final_accuracy"] == ""
    assert rows[3]["status"] == "done" and float(rows[3]["final_accuracy"]) > 0.5

    # The report shows the failed run with its error beside the finished one.
    assert aidmp("report", str(out)).returncode == 0
    page = (out / "report.html").read_text()
    assert "Final accuracy by configuration" in page  # no ε in the grid: bars, not a curve
    assert "1 done, 1 failed" in page and html.escape(error) in page

    # A failed run is tried again on the next call; the finished one is not.
    done_at = (folders[3] / SUMMARY_NAME).stat().st_mtime_ns
    again = aidmp("sweep", str(spec), "--out", str(out), "--engine", "inprocess")
    assert "1 already done, 1 to run" in again.stdout
    assert (folders[3] / SUMMARY_NAME).stat().st_mtime_ns == done_at


BAD = """\
base:
  task: breast-cancer
  institutionz: 3
  rounds: two
grid:
  dp-epsilon: [1, -2, none]
  strategy: [fedavg, fedprocs]
  out: [x]
seeds: [0]
"""


def test_a_bad_sweep_file_names_each_mistake_with_its_line(tmp_path: Path) -> None:
    spec, out = _sweep(tmp_path, BAD)
    result = aidmp("sweep", str(spec), "--out", str(out))

    assert result.returncode == 2
    err = result.stderr
    assert "Traceback" not in err
    assert f"{spec}:3: base.institutionz: unknown option; did you mean 'institutions'?" in err
    assert "valid keys: batch-size, client-dp," in err
    assert f"{spec}:4: base.rounds: Input should be a valid integer" in err
    assert f"{spec}:6: grid.dp-epsilon.1: ε must be > 0, or .inf / none for no DP" in err
    assert f"{spec}:7: grid.strategy.1: Input should be 'fedavg'" in err
    assert f"{spec}:8: grid.out: not a sweep key" in err
    assert "grid.dp-epsilon.2" not in err  # `none` is a valid ε: no DP
    assert not out.exists()  # nothing ran


def test_every_grid_point_and_seed_is_one_run_with_a_stable_id(tmp_path: Path) -> None:
    spec, _ = _sweep(tmp_path, TINY.replace("seeds: [0]", "seeds: [0, 1, 2]"))
    runs = load_sweep(spec).runs
    assert len(runs) == 12 and len({r.id for r in runs}) == 12
    assert [r.id for r in load_sweep(spec).runs] == [r.id for r in runs]
    # A changed base option is another run, even at the same grid point and seed.
    spec.write_text(spec.read_text().replace("rounds: 2", "rounds: 3"))
    assert not {r.id for r in load_sweep(spec).runs} & {r.id for r in runs}


def test_report_of_a_folder_without_runs_says_what_it_needs(tmp_path: Path) -> None:
    result = aidmp("report", str(tmp_path))
    assert result.returncode == 2
    assert "no summary.json, report.json or sweep.json in" in result.stderr
    assert "Traceback" not in result.stderr


CHROMIUM = find_chromium()


@pytest.mark.slow  # starts Chromium
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium not found: install Debian's package (apt-get install -y chromium), "
    "as .ci/run does",
)
def test_the_report_renders_offline_in_headless_chromium(tmp_path: Path) -> None:
    # Its own small sweep: under pytest-xdist, slow tests run on another worker than this
    # module's fixtures (tests/conftest.py).
    spec, out = _sweep(tmp_path, TINY.replace("rounds: 2", "rounds: 1").replace(", fedprox", ""))
    assert aidmp("sweep", str(spec), "--out", str(out), "--engine", "inprocess").returncode == 0
    result = aidmp("report", str(out))
    assert result.returncode == 0, result.stderr
    report = out / "report.html"
    page_html = report.read_text()
    # Self-contained: every image is inside the page, nothing names a file or an address.
    assert re.findall(r'src="([^"]{0,5})', page_html) and all(
        s == "data:" for s in re.findall(r'src="([^"]{0,5})', page_html)
    )
    assert not re.search(r"https?://|href=\"(?!#)|url\(", page_html)

    assert CHROMIUM is not None
    figures = [
        f"{json.loads(p.read_text())['final']['accuracy']:.4g}" for p in _summaries(out).values()
    ]
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="https://example.invalid/x.png"></body></html>')
    with Page(CHROMIUM) as page:
        # The check can fail: a page that fetches something is caught.
        page.open(control.as_uri())
        assert page.network_requests() == ["https://example.invalid/x.png"]

        page.open(report.as_uri())
        assert page.network_requests() == []
        text = page.evaluate("document.body.innerText")
        assert "Privacy–utility" in text and "Accuracy per round" in text
        for figure in figures:  # every run's final accuracy is on the page
            assert figure in text
        assert page.evaluate("document.images.length") >= 2
        assert page.evaluate(  # every image decoded (a broken one has no natural width)
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        # The results table sorts on a click: by final_accuracy, ascending.
        order = page.evaluate(
            """(() => {
              const t = document.querySelector("table.sortable");
              const col = Array.from(t.tHead.rows[0].cells)
                .findIndex(c => c.textContent === "final_accuracy");
              t.tHead.rows[0].cells[col].click();
              return Array.from(t.tBodies[0].rows).map(r => r.cells[col].dataset.v);
            })()"""
        )
        assert [float(v) for v in order] == sorted(float(v) for v in order)
        png = page.screenshot(tmp_path / "report.png")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
