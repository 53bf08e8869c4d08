"""A real deployment on loopback: a SuperLink with TLS and node authentication, and three
SuperNodes, each with its own data file, policy, ledger (and CKKS key), started with the
`aidmp` commands an IT team would type. The rows are real UCI Adult rows.

One test, one federation: starting a SuperLink and SuperNodes and waiting out Flower's
60-second heartbeat for a lost node cost minutes, so every deployment behaviour is shown
on one federation. The test prints its wall time.
"""

import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from aidmp.client.node_keys import public_key_sha256
from aidmp.privacy.audit import AUDIT_NAME, verify_audit_log
from aidmp.privacy.ledger import LEDGER_NAME
from aidmp.server.checkpoint import CHECKPOINT_NAME, load_checkpoint
from aidmp.simulations.runner import bundled_policy
from aidmp.tasks import get_task

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups"),
]
ROOT = Path(__file__).resolve().parent.parent
AIDMP = [sys.executable, "-c", "import sys; from aidmp.cli import main; sys.exit(main())"]
ROWS_PER_SITE = 2000


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client_apps_running() -> set[str]:
    """How the ClientApp processes now running were started: ours (the node's installed
    aidmp, client/pinned_runtime.py) or Flower's own `flwr-clientapp`."""
    kinds = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if b"aidmp.client.pinned_runtime" in args and b"clientapp" in args:
                kinds.add("pinned")
            elif any(a.endswith(b"/flwr-clientapp") for a in args[:2]):
                kinds.add("flower's")
    return kinds


def _wait_for(what: str, ready, timeout: float, *alive: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert all(p.poll() is None for p in alive), f"a process ended while waiting for {what}"
        time.sleep(0.5)


class Federation:
    """A coordinator and its sites on this machine, each a real process (group)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        home = str(tmp / "flwr-home")
        self.env = {**os.environ, "FLWR_HOME": home, "AIDMP_FLWR_HOME": home, "PATH": path}
        self.certs = tmp / "certs"
        self.port = _free_port()
        self.link = ["--superlink", f"127.0.0.1:{self.port}", "--ca", str(self.certs / "ca.crt")]
        self.procs: dict[str, subprocess.Popen] = {}
        self.aidmp("certs", "init", str(self.certs))

    def aidmp(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        done = subprocess.run([*AIDMP, *args], env=self.env, capture_output=True, text=True, **kw)
        assert not check or done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    def start(self, name: str, *args: str, cwd: Path | None = None) -> subprocess.Popen:
        # Output goes to a file, and we wait on the process, not on its output: a SuperExec
        # child can outlive its parent and hold a pipe open.
        log = (self.tmp / f"{name}.log").open("a")
        self.procs[name] = subprocess.Popen(
            [*AIDMP, *args],
            env=self.env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.procs[name]

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def kill(self, name: str) -> None:
        """SIGKILL a whole process group: no goodbye, as when a machine loses power."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait(timeout=30)

    def start_coordinator(self) -> None:
        self.start(
            "superlink",
            "coordinator",
            "start",
            "--port",
            str(self.port),
            "--host",
            "127.0.0.1",
            "--certs",
            str(self.certs),
            "--state",
            str(self.tmp / "link"),
        )
        context = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))

        def healthy() -> bool:
            try:
                url = f"https://127.0.0.1:{self.port}/health"
                urllib.request.urlopen(url, context=context, timeout=2)
                return True
            except OSError:
                return False

        _wait_for("the SuperLink", healthy, 60, self.procs["superlink"])

    def enroll(self, name: str) -> Path:
        """The site makes its key pair; the coordinator registers the public half."""
        key = self.tmp / f"{name}.key"
        self.aidmp("node", "keygen", "--out", str(key))
        self.aidmp("coordinator", "register-node", f"{key}.pub", "--name", name, *self.link)
        return key

    def site(self, i: int, rows) -> Path:
        folder = self.tmp / f"site-{i}"
        folder.mkdir()
        part = rows.iloc[i * ROWS_PER_SITE : (i + 1) * ROWS_PER_SITE].assign(consent="yes")
        part.to_csv(folder / "rows.csv", index=False)
        return folder

    def start_node(self, name: str, *extra: str, data_of: str = "", link=None):
        """`aidmp node start` for `name`: its own state folder, and its site's rows (or
        those of site `data_of`)."""
        return self.start(name, "node", "start", *(self.link if link is None else link),
                          "--data", str(self.tmp / (data_of or name) / "rows.csv"),
                          "--policy", str(bundled_policy("adult")),
                          "--ledger", str(self.tmp / name / "state"), "--name", name,
                          "--port", str(_free_port()), *extra)  # fmt: skip

    def start_site(self, i: int, *extra: str) -> subprocess.Popen:
        key = str(self.tmp / f"site-{i}.key")
        # A fixed σ, the site's own: a budget planned over one job's rounds would leave
        # nothing for the re-run round and the later query and k-means job (code 102).
        return self.start_node(f"site-{i}", "--node-key", key, "--dp-epsilon", "8",
                               "--dp-noise-multiplier", "1.5", *extra)  # fmt: skip

    def submit(self, run_config: str, *extra: str, name: str = "run") -> subprocess.Popen:
        """`aidmp run` as a coordinator types it, from a folder that is not the project:
        the App it submits is a bundle with no code (server/app_bundle.py)."""
        return self.start(name, "run", *self.link, "--run-config", run_config, *extra,
                          cwd=self.tmp)  # fmt: skip

    def close(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def federation(tmp_path):
    fed = Federation(tmp_path)
    try:
        yield fed
    finally:
        fed.close()


def _releases(state: Path) -> tuple[list[dict], list[dict]]:
    """(ledger entries, audited replies that released something) of one site: each train
    reply, and each evaluate reply whose figures were noised and charged under DP."""
    ledger = json.loads((state / LEDGER_NAME).read_text())["body"]["entries"]
    audit = [json.loads(line) for line in (state / AUDIT_NAME).read_text().splitlines()]
    return ledger, [
        r
        for r in audit
        if r["kind"] == "train-reply"
        or (r["kind"] == "evaluate-reply" and "release" in r["details"])
    ]


def _charged_exactly_once(state: Path) -> list[dict]:
    """Every update the site released is one ledger entry, and every entry one release:
    matched by the message each answered, in order, with the same ε."""
    assert verify_audit_log(state / AUDIT_NAME) == []
    ledger, sent = _releases(state)
    assert [e["message_id"] for e in ledger] == [r["details"]["reply_to"] for r in sent]
    spent = [0.0] + [e["epsilon_after"] for e in ledger]
    for i, (entry, record) in enumerate(zip(ledger, sent, strict=True)):
        assert record["epsilon_charged"] == pytest.approx(spent[i + 1] - spent[i])
        assert (record["round"], record["run"]) == (entry["round"], entry["run_id"])
        assert record["details"].get("release", 1) == entry["release"]
        assert record["details"].get("release_kind", "training") == entry["release_kind"]
    return ledger


def test_a_tls_federation_with_auth_he_dp_governance_survives_a_lost_node_and_coordinator(
    federation,
):
    """One federation, as an IT team starts it: TLS, node authentication, three sites
    with their own rows, policy, DP ledger and CKKS key. A stranger nobody registered
    and a node that will not speak TLS are refused. The encrypted job: round 1 with
    three sites; site-2 is killed (no goodbye), so round 2 finishes with the other two;
    site-2 comes back for round 3; the coordinator is killed in round 3, after a site has
    released its update; it is restarted and resumes from its round-2 checkpoint. Then a
    federated statistics query (`aidmp run --analysis`)."""
    fed, started = federation, time.monotonic()
    laps = [started]

    def lap(what: str) -> None:  # where the time goes (shown with -s)
        laps.append(time.monotonic())
        print(f"\n[deployment] {what}: {laps[-1] - laps[-2]:.0f}s (at {laps[-1] - started:.0f}s)")

    keys = fed.tmp / "keys"
    fed.aidmp("keys", "init", "--out", str(keys))
    fed.start_coordinator()
    rows = get_task("adult").raw_train()
    site_keys = ("--keys", str(keys / "institution.ckks"))
    for i in range(3):
        fed.enroll(f"site-{i}")
        fed.site(i, rows)
    for i in range(2):  # site-2 joins once the coordinator says it is waiting for it
        fed.start_site(i, *site_keys)
    # A stranger nobody registered, and a node that will not speak TLS, try to join too.
    fed.aidmp("node", "keygen", "--out", str(fed.tmp / "stranger.key"))
    key = str(fed.tmp / "stranger.key")
    stranger = fed.start_node("stranger", "--node-key", key, "--no-dp", data_of="site-0")
    plain = fed.start_node("plain", "--no-dp", "--max-retries", "2", "--max-wait-time", "20",
                           data_of="site-0", link=["--superlink", f"127.0.0.1:{fed.port}",
                                                   "--insecure"])  # fmt: skip

    out = fed.tmp / "out"
    ckpt = out / CHECKPOINT_NAME
    # Every round waits for all three sites to be connected; two replies are enough.
    run_config = (
        f"task='adult' num-rounds=3 partition='iid' out-dir='{out}' he=true "
        f"he-keys='{keys / 'coordinator.ckks'}' central-eval=false fraction-evaluate=0.0 "
        "min-available-nodes=3 min-nodes=2 round-timeout=240 learning-rate=0.3"
    )
    run = fed.submit(run_config)
    _wait_for("the waiting line", lambda: "waiting for 3 node(s)" in fed.log("run"), 300, run)
    lap("setup, until the coordinator waits")
    # The sites are named as the coordinator registered them, though none has replied yet.
    assert re.search(r"waiting for 3 node\(s\) to connect \(\d connected: site-", fed.log("run"))
    fed.start_site(2, *site_keys)

    def checkpoint_at(rnd: int):
        return lambda: ckpt.exists() and load_checkpoint(ckpt).round >= rnd

    client_apps: set[str] = set()  # watched while round 1 trains

    def round_1_watching_client_apps() -> bool:
        client_apps.update(_client_apps_running())
        return checkpoint_at(1)()

    _wait_for("round 1", round_1_watching_client_apps, 300, run)
    lap("round 1")
    # The sites ran the aidmp they installed, never the App bundle's (which has no code).
    assert client_apps == {"pinned"}, client_apps
    fed.kill("site-2")  # gone without a word, in round 2
    _wait_for("round 2", checkpoint_at(2), 300, run)
    lap("round 2, site-2 lost")
    fed.start_site(2, *site_keys)  # back: Flower knows it by its key; round 3 waits for it

    def released_round_3() -> bool:
        for i in range(3):
            audit = fed.tmp / f"site-{i}" / "state" / AUDIT_NAME
            if audit.exists() and '"round":3' in audit.read_text().replace(" ", ""):
                return True
        return False

    _wait_for("a release in round 3", released_round_3, 300, run)
    lap("a release in round 3")
    fed.kill("superlink")  # the coordinator's machine goes down, ServerApp and all
    fed.kill("run")
    assert load_checkpoint(ckpt).round == 2
    fed.start_coordinator()  # same state folder: registered nodes are kept
    resumed = fed.submit(run_config, "--resume")
    assert resumed.wait(timeout=420) == 0, fed.log("run")[-3000:]
    lap("coordinator restarted, round 3 resumed, final model")
    assert (out / "report.json").is_file(), fed.log("run")[-3000:]
    console = fed.log("run")  # the coordinator's console: both runs of the job
    assert "round   1/3" in console and "about" in console and "round   3/3" in console
    closing = console.split("ServerApp finished")[0].rsplit("round   3/3", 1)[1]
    assert "3 of 3 round(s) aggregated" in closing and "eps spent per site: site-0" in closing
    for name in ("report.json", "summary.json", "metrics.png", CHECKPOINT_NAME):
        assert f": {out / name}" in closing and (out / name).stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["institution_names"] == ["site-0", "site-1", "site-2"]
    assert summary["skipped_rounds"] == [] and summary["rounds"] == 3
    print(f"\nTLS + auth + HE + DP + governance; node killed and back, coordinator killed "
          f"and resumed, 3 rounds: {time.monotonic() - started:.0f}s with setup")  # fmt: skip

    assert stranger.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in fed.log("stranger")
    sha = public_key_sha256(fed.tmp / "stranger.key.pub")
    assert f"its key (SHA-256 {sha}) is not registered there" in fed.log("stranger")
    assert plain.wait(timeout=120) != 0
    refused = fed.log("plain")
    # Flower words it by how the TLS handshake broke off; both mean "no connection".
    assert "Server disconnected" in refused or "could not establish a connection" in refused

    report = json.loads((out / "report.json").read_text())
    assert report["rounds_completed"] == 3 and report["resumed_from_round"] == 2
    assert report["he"]["enabled"]
    assert [r["first_round"] for r in report["runs"]] == [1, 3]
    first, second, third = report["per_round"]
    assert (first["train_replies"], second["train_replies"], third["train_replies"]) == (3, 2, 3)
    # Each site's own console: a line per release, with its spend.
    assert "[site-0] round 1 train-reply: " in fed.log("site-0")
    assert "governance admit" in fed.log("site-0") and " left" in fed.log("site-0")
    (lost,) = second["train_failures"]
    assert lost["institution"] == "site-2"  # named, though the SuperLink reported it
    assert third["aggregated"] and "site-2" in third["governance"]  # rejoined
    assert set(report["governance"]["by_institution"]) == {"site-0", "site-1", "site-2"}
    # The App bundle `aidmp run` sent was settings only, unpacked in the site's own state
    # folder (not in ~/.flwr): no code came from the coordinator.
    apps = fed.tmp / "site-0" / "state" / ".flwr" / "apps"
    assert list(apps.glob("*/pyproject.toml")) and not list(apps.rglob("*.py"))
    # Each site's privacy officer: a governance report for every round it governed.
    history = fed.tmp / "site-0" / "state" / "governance-reports"
    kept = {p.name for p in history.glob(f"{report['job_id']}-round-*.html")}
    assert {f"{report['job_id']}-round-00{r}.html" for r in (1, 2, 3)} <= kept

    rerun = report["runs"][1]["run_id"]
    released_twice = 0
    for i in range(3):
        ledger = _charged_exactly_once(fed.tmp / f"site-{i}" / "state")
        assert {e["job_id"] for e in ledger} == {report["job_id"]}
        # Each round's update (fraction-evaluate=0: no evaluation figures are released).
        assert {e["release_kind"] for e in ledger} == {"training"}
        rounds = [(e["round"], e["release"]) for e in ledger]
        # Round 3 of the run the crash cut short stays charged; its re-run is release 2.
        cut_short = [e for e in ledger if e["round"] == 3 and e["run_id"] != rerun]
        if cut_short:
            released_twice += 1
            assert rounds[-2:] == [(3, 1), (3, 2)]
        else:
            assert rounds[-1] == (3, 1)
        assert ledger[-1]["run_id"] == rerun
    assert released_twice >= 1

    # The final model at each site: the job's end sends it (ciphertext) to every site, and
    # each keeps it decrypted in its state folder; site-0 scores it on its own rows.
    assert "final model (round 3) kept by site-0, site-1, site-2" in console
    for i in range(3):
        kept = fed.tmp / f"site-{i}" / "state" / f"model-{report['job_id']}.pt"
        content = torch.load(kept, weights_only=True)
        assert (content["task"], content["round"]) == ("adult", 3)
    model = fed.tmp / "site-0" / "state" / f"model-{report['job_id']}.pt"
    scored = fed.aidmp("model", "evaluate", str(model), "--data",
                       str(fed.tmp / "site-0" / "rows.csv"), "--policy",
                       str(bundled_policy("adult"))).stdout  # fmt: skip
    accuracy = float(scored.split("accuracy ")[1].split(",")[0])
    print(f"\n[deployment] aidmp model evaluate at site-0: {scored.strip()}")
    # Three DP rounds (sigma 1.5, learning rate 0.3) on 2,000 rows a site: measured in
    # process, 0.812 to 0.825 against the majority class's 0.745.
    assert accuracy > float(scored.rsplit("majority class alone ", 1)[1].split()[0]), scored

    # Two jobs at once, as a coordinator may submit them: a federated statistics query
    # under HE (`aidmp run --analysis`: the coordinator adds the sites' encrypted partials
    # and, holding the public key only, asks a site that answered to decrypt the one sum)
    # and a federated k-means job under HE (`aidmp run --cluster`, its two shortest rounds:
    # initialization, one Lloyd step; noisy per-cluster counts and sums as ciphertext, a
    # site decrypts each round's one sum). Each site's one ledger charges both.
    stats = fed.tmp / "stats"
    query = ROOT / "simulations" / "queries" / "adult.yaml"
    job = fed.tmp / "job.yaml"
    job.write_text("k: 3\nepsilon: 1.0\nrounds: 2\nfeatures: [age:17:90, hours-per-week:1:99]\n")
    clusters = fed.tmp / "clusters"
    he_job = f"min-nodes=3 min-available-nodes=3 he=true he-keys='{keys / 'coordinator.ckks'}'"
    asked = fed.submit(f"out-dir='{stats}' {he_job}", "--analysis", str(query), name="stats")
    clustered = fed.submit(f"out-dir='{clusters}' {he_job}", "--cluster", str(job),
                           name="kmeans")  # fmt: skip
    assert asked.wait(timeout=300) == 0, fed.log("stats")[-3000:]
    assert clustered.wait(timeout=300) == 0, fed.log("kmeans")[-3000:]
    lap("a statistics query and a k-means job, at once")

    assert (stats / "analysis.json").is_file(), fed.log("stats")[-3000:]
    result = json.loads((stats / "analysis.json").read_text())
    assert result["he"] is True
    assert result["institutions"]["answered"] == ["site-0", "site-1", "site-2"]
    assert result["institutions"]["declined"] == []
    assert result["statistics"]["rows"]["value"] > 0
    assert (clusters / "clusters.json").is_file(), fed.log("kmeans")[-3000:]
    found = json.loads((clusters / "clusters.json").read_text())
    assert len(found["centroids"]) == 3
    for centre in found["centroids"]:
        assert 17 <= centre["age"] <= 90 and 1 <= centre["hours-per-week"] <= 99
    decryptions = 0
    for i in range(3):
        state = fed.tmp / f"site-{i}" / "state"
        assert verify_audit_log(state / AUDIT_NAME) == []
        entries = json.loads((state / LEDGER_NAME).read_text())["body"]["entries"]
        (charged,) = [e for e in entries if e["release_kind"] == "analytics"]
        assert charged["job_id"] == result["job_id"]
        kmeans = [e for e in entries if e["release_kind"] == "clustering"]
        assert [e["job_id"] for e in kmeans] == [found["job_id"]] * 2
        audit = [json.loads(line) for line in (state / AUDIT_NAME).read_text().splitlines()]
        (answered,) = [r for r in audit if r["kind"] == "query.analytics-reply"]
        assert answered["details"]["reply_to"] == charged["message_id"]
        assert answered["details"]["encrypted"] is True
        decrypted = [r for r in audit if r["kind"] == "query.decrypt-reply"]
        assert all(r["epsilon_charged"] is None for r in decrypted)
        decryptions += sum(r["run"] == result["job_id"] for r in decrypted)
    assert decryptions == 1  # one site decrypted the statistics job's one sum
