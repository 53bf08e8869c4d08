"""The project installs as one package, `aidmp`, and its scripts run from any folder.

The wheel test builds the real wheel and installs it (not editable) into a fresh
virtual environment. The dependencies come from this environment's site-packages
through a path file, so nothing is downloaded but the build backend; the fresh
environment's own site-packages then shows exactly what this project installs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = sorted((REPO / "benchmarks").glob("*.py"))


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _clean_env() -> dict[str, str]:
    """The environment without anything that would point Python at the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


_BUNDLE_FILES = """
import io, tempfile, zipfile
from pathlib import Path
from flwr.cli.build import build_fab_from_disk
from aidmp.server.app_bundle import write_app_bundle
fab = build_fab_from_disk(write_app_bundle(Path(tempfile.mkdtemp())))
print(*sorted(zipfile.ZipFile(io.BytesIO(fab)).namelist()))
"""


@pytest.mark.slow
def test_the_wheel_installs_only_aidmp_and_simulates_from_outside_the_repo(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("aidmp-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = _site_packages(venv)
    before = {p.name for p in site.iterdir()}
    python = venv / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    added = {p.name for p in site.iterdir()} - before
    assert added == {"aidmp", "aidmp-0.1.0.dist-info"}, added
    for room in ("server", "client", "strategies", "privacy", "simulations", "tasks"):
        assert (site / "aidmp" / room / "__init__.py").is_file(), room
        assert not (site / room).exists(), room
    assert (site / "aidmp" / "simulations" / "policies" / "adult.yaml").is_file()

    # Dependencies from this environment: a plain path line adds the folder without
    # running the path files in it (so this checkout's editable link stays out).
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = _clean_env() | {"FLWR_HOME": str(tmp_path / "flwr-home")}
    where = subprocess.run(
        [python, "-c", "import aidmp.server.app as a, aidmp.client.app; print(a.__file__)"],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout

    # What `aidmp run` submits from here: an App bundle of settings, with no code.
    bundle = subprocess.run(
        [python, "-c", _BUNDLE_FILES], cwd=outside, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert bundle.stdout.split() == [".info/CONTENT", "pyproject.toml"], bundle.stderr[-2000:]

    out = outside / "X"
    # The in-process engine: the point is the installed package, and Ray's own start-up
    # (tested in tests/test_simulation.py) would double this test's time.
    args = shlex.split(
        "simulate --task breast-cancer --institutions 3 --rounds 2 --out X --engine inprocess"
    )
    run = subprocess.run(
        [venv / "bin" / "aidmp", *args],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (out / "summary.json").is_file() and (out / "metrics.png").is_file()


# `python benchmarks/<name>.py --help` for every script, in one Python process (each
# script's imports are the slow part, and they are the same): benchmarks/ first on
# sys.path, as Python puts a script's folder; the script run as __main__.
_HELP_ALL = """
import contextlib, io, runpy, sys
sys.path[0] = sys.argv[1]
for script in sys.argv[2:]:
    sys.argv, out, code = [script, "--help"], io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:
        code = repr(exc)
    print(script, code, "usage:" in out.getvalue(), sep="\t")
"""


def test_every_benchmark_runs_as_written_from_another_folder(tmp_path):
    """`python benchmarks/<name>.py` puts benchmarks/ first on sys.path; no script there
    may shadow a package, and each one parses its options."""
    assert len(BENCHMARKS) >= 8
    result = subprocess.run(
        [sys.executable, "-c", _HELP_ALL, str(REPO / "benchmarks"), *map(str, BENCHMARKS)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line.split("\t") for line in result.stdout.splitlines() if "\t" in line]
    assert [Path(script) for script, _, _ in lines] == BENCHMARKS, result.stdout[-3000:]
    for script, code, usage in lines:
        assert (code, usage) in (("0", "True"), ("None", "True")), (script, code)


def test_no_module_in_benchmarks_or_tests_is_named_like_a_package():
    import aidmp

    taken = set(aidmp.SUBPACKAGES) | {"aidmp", "analytics"}
    for folder in ("benchmarks", "tests"):
        names = {p.stem for p in (REPO / folder).glob("*.py")}
        assert not names & taken, (folder, names & taken)


def test_flower_checks_our_app_references_without_importing_a_subpackage():
    """Flower's simulation checks the ClientApp reference on one thread (outside its
    import lock) while it imports the ServerApp on another. A dotted reference such as
    `aidmp.client.app:app` made that check import `aidmp.client` while `aidmp` was half
    initialised, and one `flwr run .` in three failed with "No module named
    'aidmp.client'". See aidmp/flower_app.py."""
    import tomllib

    from flwr.supercore.object_ref import load_app, validate

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    components = pyproject["tool"]["flwr"]["app"]["components"]
    for ref in components.values():
        module, _, _attribute = ref.partition(":")
        # A module file inside aidmp/ itself, never one in a room (aidmp.client, ...).
        assert module.count(".") == 1 and module.startswith("aidmp."), ref
        assert (REPO / "aidmp" / f"{module.split('.')[1]}.py").is_file(), ref
        assert validate(ref, project_dir=REPO) == (True, None)
    assert type(load_app(components["serverapp"], ValueError, REPO)).__name__ == "ServerApp"
    assert type(load_app(components["clientapp"], ValueError, REPO)).__name__ == "ClientApp"
