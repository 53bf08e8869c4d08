"""Certificates and node keys for a deployment: what TLS and node authentication need."""

import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from aidmp.client.node_keys import node_keygen
from aidmp.errors import AidmpError
from aidmp.server.certs import CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, init_certs, server_hosts


def test_the_server_certificate_is_signed_by_the_ca_and_names_its_hosts(tmp_path):
    init_certs(tmp_path, ["coordinator.example.org", "10.0.0.5"])
    assert server_hosts(tmp_path / SERVER_CERT) == ["coordinator.example.org", "10.0.0.5"]
    ca = x509.load_pem_x509_certificate((tmp_path / CA_CERT).read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / SERVER_CERT).read_bytes())
    server.verify_directly_issued_by(ca)  # raises if not
    # Python's own TLS stack accepts the pair, as gRPC's will.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / SERVER_CERT, tmp_path / SERVER_KEY)
    for private in (CA_KEY, SERVER_KEY):
        assert stat.S_IMODE((tmp_path / private).stat().st_mode) == 0o600


def test_certs_are_never_overwritten(tmp_path):
    init_certs(tmp_path)
    assert server_hosts(tmp_path / SERVER_CERT) == ["localhost", "127.0.0.1"]
    with pytest.raises(AidmpError, match="already holds"):
        init_certs(tmp_path)


def test_node_keys_are_p384_openssh_and_owner_only(tmp_path):
    private, public, digest = node_keygen(tmp_path / "node0")
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert key.curve.name == "secp384r1"
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and len(digest) == 64
    with pytest.raises(AidmpError, match="exists"):
        node_keygen(tmp_path / "node0")


def test_flower_tools_find_each_other_without_an_activated_environment(monkeypatch):
    """flower-superlink starts flower-superexec by name, and a SuperNode flwr-clientapp:
    `.venv/bin/aidmp` run from a plain shell must still put them on PATH."""
    from aidmp.flower_tools import flower_env

    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = flower_env()
    first = Path(env["PATH"].split(os.pathsep)[0])
    for tool in ("flower-superexec", "flwr-serverapp", "flwr-clientapp"):
        assert (first / tool).is_file(), tool
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"


def test_a_run_with_no_superlink_says_none_was_started_not_how_to_resume(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [sys.executable, "-m", "aidmp.cli", "run", "--superlink", f"127.0.0.1:{port}",
         "--insecure", "--flwr-home", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "aidmp: no run was started" in done.stderr
    assert "--resume" not in done.stderr  # there is no job to resume


@pytest.mark.parametrize(
    ("status", "code", "said"),
    [("finished:completed", 0, ""), ("finished:failed", 1, "aidmp: run 42 failed: it broke")],
)
def test_aidmp_run_exits_by_how_the_run_ended_not_by_flwr_runs_exit(
    status, code, said, tmp_path, monkeypatch, capsys
):
    """`flwr run --stream` exits 0 for a run whose ServerApp raised; `aidmp run` asks
    the SuperLink (`flwr ls --run-id`) how the run ended. A stand-in `flwr` plays the
    SuperLink's two answers (this is our own logic; the real one runs in
    tests/test_deployment.py)."""
    import json
    import stat

    import aidmp.flower_tools
    from aidmp.cli.coordinator import _flwr_run

    listing = {"runs": [{"run-id": "42", "status": status, "status-details": "it broke"}]}
    fake = tmp_path / "flwr"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = run ]; then echo "Successfully started run 42"; echo "a log line"; '
        f"else echo '{json.dumps(listing)}'; fi\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(aidmp.flower_tools, "flower_tool", lambda name: str(fake))
    run = [str(fake), "run", ".", "conn", "--stream"]
    assert _flwr_run(run, {}, "conn", resumable=True) == code
    out, err = capsys.readouterr()
    assert "a log line" in out  # Flower's output passes through
    assert said in err
    assert ("--resume" in err) == (code != 0)  # a training job that started and failed


@pytest.mark.parametrize(
    ("run_config", "expected"),
    [
        ("num-round=3", "unknown run-config key(s) num-round (did you mean num-rounds?)"),
        ("strategy='fedavgx'", "run-config 'strategy'"),
        ("num-rounds=3 a=b=c", "give space-separated KEY=VALUE pairs"),
        ("num-rounds=3 he", "'he' is not KEY=VALUE"),  # Flower's parser drops it silently
        ("my.toml num-rounds=3", "'my.toml' is not KEY=VALUE"),
        ("missing.toml", "does not parse"),
    ],
)
def test_aidmp_run_checks_the_run_config_before_submitting(run_config, expected, tmp_path):
    """A wrong key or value is named, with the fix, before anything reaches a SuperLink
    (none listens here): exit 2, one line, no traceback."""
    from tests.inprocess_cli import aidmp

    done = aidmp("run", "--superlink", "127.0.0.1:9", "--insecure", "--flwr-home",
                 str(tmp_path), "--run-config", run_config)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aidmp: error: ") and expected in lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "config.toml").exists()  # not even a connection was written


def test_a_run_config_is_a_toml_file_read_whole_or_pairs(tmp_path):
    from aidmp.cli.coordinator import run_config_pairs

    toml = tmp_path / "job.toml"
    toml.write_text('num-rounds = 4\nstrategy = "fedprox"\n')
    assert run_config_pairs(str(toml)) == {"num-rounds": 4, "strategy": "fedprox"}
    assert run_config_pairs(" num-rounds=2  he=true ") == {"num-rounds": 2, "he": True}


def test_a_node_refuses_to_start_on_data_without_a_column_its_policy_requires(tmp_path):
    """Every round would decline for it, visible only to the coordinator: `node start`
    names the column at the site, before any SuperNode starts."""
    from aidmp.simulations.runner import bundled_policy
    from aidmp.tasks import get_task
    from tests.inprocess_cli import aidmp

    rows = get_task("adult").raw_train().iloc[:50].drop(columns=["hours-per-week"])
    rows.to_csv(tmp_path / "rows.csv", index=False)
    done = aidmp("node", "start", "--superlink", "127.0.0.1:1", "--insecure",
                 "--data", str(tmp_path / "rows.csv"), "--policy", str(bundled_policy("adult")),
                 "--ledger", str(tmp_path / "state"), "--no-dp")  # fmt: skip
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "no column 'hours-per-week'" in line and "every round would decline" in line
    assert "Traceback" not in done.stdout + done.stderr


def test_aidmp_run_lists_and_stops_runs_through_its_own_connection(tmp_path, monkeypatch):
    """`aidmp run --list` and `--stop N` are Flower's `flwr ls` and `flwr stop` over the
    connection `aidmp run` writes (a stand-in `flwr` records what it was asked)."""
    import stat

    import aidmp.flower_tools
    from tests.inprocess_cli import aidmp as cli

    asked = tmp_path / "asked"
    fake = tmp_path / "flwr"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {asked}\necho "FLWR_HOME=$FLWR_HOME" >> {asked}\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(aidmp.flower_tools, "flower_tool", lambda name: str(fake))
    home = tmp_path / "home"
    link = ("--superlink", "127.0.0.1:9", "--insecure", "--flwr-home", str(home))
    assert cli("run", *link, "--list").returncode == 0
    assert cli("run", *link, "--stop", "42").returncode == 0
    ls, env1, stop, env2 = asked.read_text().splitlines()
    assert ls.split()[0] == "ls" and stop.split()[:2] == ["stop", "42"]
    assert ls.split()[1] == stop.split()[2]  # one connection, named in config.toml
    assert ls.split()[1] in (home / "config.toml").read_text()
    assert env1 == env2 == f"FLWR_HOME={home}"


@pytest.mark.slow  # starts a real SuperNode
def test_a_node_says_in_one_line_when_it_cannot_connect_or_its_port_is_taken(tmp_path):
    """Flower retries a wrong address quietly and answers a taken port with a traceback;
    `node start` names each, with what to do."""
    import socket

    from aidmp.simulations.runner import bundled_policy
    from aidmp.tasks import get_task

    get_task("adult").raw_train().iloc[:50].assign(consent="yes").to_csv(
        tmp_path / "rows.csv", index=False
    )

    def node_start(port: int) -> tuple[int, list[str]]:
        done = subprocess.run(
            [sys.executable, "-c", "import sys; from aidmp.cli import main; sys.exit(main())",
             "node", "start", "--superlink", "127.0.0.1:1", "--insecure",
             "--data", str(tmp_path / "rows.csv"), "--policy", str(bundled_policy("adult")),
             "--ledger", str(tmp_path / "state"), "--no-dp", "--max-retries", "1",
             "--max-wait-time", "5", "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return done.returncode, [x for x in done.stderr.splitlines() if x.startswith("aidmp: ")]

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, said = node_start(port)
    assert code != 0 and said == [
        f"aidmp: port {port} on this machine is taken (another node or program); "
        "start this node with another --port"
    ]
    code, said = node_start(port)  # free now; nothing listens at 127.0.0.1:1
    assert code != 0 and len(said) == 1
    assert said[0].startswith("aidmp: no connection to the coordinator at 127.0.0.1:1 yet")


def test_aidmp_run_keeps_flowers_own_chatter_in_a_log_file(tmp_path, monkeypatch, capsys):
    """The coordinator's console: our lines, Flower's warnings and errors; Flower's and
    uvicorn's INFO and DEBUG lines (raw ANSI codes and all) go to the log file only."""
    import json
    import stat

    import aidmp.flower_tools
    from aidmp.cli.coordinator import _flwr_run

    listing = {"runs": [{"run-id": "42", "status": "finished:completed"}]}
    fake = tmp_path / "flwr"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = run ]; then\n'
        '  echo "Successfully started run 42"\n'
        "  printf '\\033[92mINFO \\033[0m:      configure_train: Sampled 3 nodes\\n'\n"
        "  echo '12/02/2026 05:33:45:INFO:configure_train: Sampled 3 nodes'\n"
        "  echo 'INFO:     Started server process [1]'\n"
        "  echo 'Successfully installed aidmp to /x/.flwr/apps/aidmp.aidmp.0.1.0.e3bca209.'\n"
        "  echo 'round   1/3  acc 0.8  nodes 3/3'\n"
        "  printf '\\033[93mWARNING \\033[0m:   a site is slow\\n'\n"
        f"else echo '{json.dumps(listing)}'; fi\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(aidmp.flower_tools, "flower_tool", lambda name: str(fake))
    log = tmp_path / "logs" / "run.log"
    assert _flwr_run([str(fake), "run", ".", "conn", "--stream"], {}, "conn", log) == 0
    console = capsys.readouterr().out
    assert "round   1/3" in console and "a site is slow" in console
    assert "Sampled" not in console and "Started server process" not in console
    assert "Successfully installed" not in console
    assert f"go to {log}" in console
    kept = log.read_text()
    assert kept.count("Sampled 3 nodes") == 2 and "round   1/3" in kept


def test_a_name_given_at_registration_goes_into_every_run_on_that_superlink(tmp_path, monkeypatch):
    """`register-node --name site-0` records the node id Flower gives the key under that
    name; `aidmp run` hands the names to the ServerApp (run config `node-names`), so a
    site that never replies is named, not numbered (a stand-in `flwr` answers as Flower
    does and records what it was asked)."""
    import json
    import stat

    import aidmp.flower_tools
    from tests.inprocess_cli import aidmp as cli

    asked = tmp_path / "asked"
    fake = tmp_path / "flwr"
    fake.write_text(
        f'#!/bin/sh\nfor a in "$@"; do echo "$a" >> {asked}; case "$a" in *.toml) '
        f'cat "$a" >> {asked};; esac; done\n'
        'echo "SuperNode 1234567 registered successfully."\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(aidmp.flower_tools, "flower_tool", lambda name: str(fake))
    import aidmp.server.superlink  # holds its own reference, once imported

    monkeypatch.setattr(aidmp.server.superlink, "flower_tool", lambda name: str(fake))
    home = tmp_path / "home"
    link = ("--superlink", "127.0.0.1:9", "--insecure", "--flwr-home", str(home))
    node_keygen(tmp_path / "node.key")
    pub = str(tmp_path / "node.key.pub")
    done = cli("coordinator", "register-node", pub, "--name", "site-0", *link)
    assert done.returncode == 0 and "as site-0 (SuperNode 1234567)" in done.stdout
    assert asked.read_text().splitlines()[-2:] == ["--name", "site-0"]  # Flower's too

    bad = cli("coordinator", "register-node", pub, "--name", "site 0;rm", *link)
    assert bad.returncode == 2 and "letters, digits" in bad.stderr

    asked.unlink()
    cli("run", *link, "--run-config", "num-rounds=1")  # the stand-in starts no run
    import tomllib

    from aidmp.config import RunConfig

    sent = asked.read_text().split("--run-config\n", 1)[1].split("\n", 1)[1]  # its TOML
    cfg = RunConfig.from_flower(tomllib.loads(sent))
    assert cfg.num_rounds == 1 and cfg.registered_names() == {1234567: "site-0"}
    asked.unlink()  # another SuperLink: its own names (none)
    cli("run", "--superlink", "127.0.0.1:10", "--insecure", "--flwr-home", str(home))
    assert "--stream" in asked.read_text() and "node-names" not in asked.read_text()
    assert json.loads((home / "node-names.json").read_text()) == {
        "127.0.0.1:9": {"1234567": "site-0"}
    }


def test_node_names_in_a_run_config_must_be_a_json_object_of_ids():
    from aidmp.config import RunConfig

    with pytest.raises(AidmpError, match="node-names"):
        RunConfig.from_flower({"node-names": "site-0"})
    with pytest.raises(AidmpError, match="node-names"):
        RunConfig.from_flower({"node-names": '{"abc": "site-0"}'})
    assert RunConfig.from_flower({}).registered_names() == {}


def test_names_registered_at_once_are_all_kept(tmp_path):
    """Sites are often registered by a loop run in parallel: none of the names is lost."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from aidmp.server.superlink import _record_node_name, registered_node_names

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: _record_node_name(tmp_path, "h:1", i, f"site-{i}"), range(40)))
    assert registered_node_names(tmp_path, "h:1") == {str(i): f"site-{i}" for i in range(40)}
    (tmp_path / "node-names.json").write_text("[1, 2]")
    with pytest.raises(AidmpError, match="delete it and register"):
        _record_node_name(tmp_path, "h:1", 1, "site-1")
    assert json.loads((tmp_path / "node-names.json").read_text()) == [1, 2]  # left as it was


def test_run_config_values_survive_the_toml_file_aidmp_run_sends(tmp_path):
    """Whatever a string holds (quotes, newlines, DEL, characters beyond the BMP) comes
    back the same; an array or a date from a TOML file is refused, not made a string."""
    import tomllib

    from aidmp.cli.coordinator import run_config_pairs, write_run_config

    pairs = {"out-dir": "a'b\"c\\\nd\x7f😀é", "dp-delta": 1e-05, "he": True, "seed": 3,
             "round-timeout": float("inf")}  # fmt: skip
    path = write_run_config(pairs, tmp_path, "rc.toml")
    assert tomllib.loads(Path(path).read_text(encoding="utf-8")) == pairs
    bad = tmp_path / "bad.toml"
    bad.write_text("num-rounds = [1, 2]\n")
    with pytest.raises(AidmpError, match="num-rounds"):
        run_config_pairs(str(bad))
