"""Federated k-means end to end, in process (simulations/inprocess.py): the coordinator's
run_clustering, the real ClientApp's clustering handler (governance, the node's cap and
budget, real ledgers, real noise, real CKKS ciphertexts) and the audit trail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message

from aidmp.analytics.clustering import ClusterJob, make_job, plan_clustering, policy_features
from aidmp.config import RunConfig
from aidmp.errors import AidmpError, DeclineCode
from aidmp.governance.policy import load_policy
from aidmp.privacy.audit import AUDIT_NAME, AuditLog, verify_audit_log
from aidmp.privacy.clustering_release import CLUSTERING, release_cluster_round
from aidmp.privacy.he.keys import simulation_keys
from aidmp.privacy.ledger import LEDGER_NAME, BudgetExhausted, PrivacyLedger
from aidmp.privacy.policy import DPPolicy
from aidmp.server.clustering import CLUSTERS_NAME, CLUSTERS_PLOT
from aidmp.simulations.clustering import cluster
from aidmp.simulations.runner import bundled_policy
from tests.inprocess_cli import aidmp
from tests.recording import RecordingGrid

FEATURES = ["age", "education-num", "hours-per-week"]


def _cfg(out: Path, **extra: object) -> RunConfig:
    return RunConfig.from_flower(
        {
            "task": "adult",
            "partition": "iid",
            "out-dir": str(out),
            "governance-policy": str(bundled_policy("adult")),
            "dp": True,
            "dp-epsilon": 3.0,
            "central-eval": False,
            **extra,
        }
    )


def _job(epsilon: float = 1.0, rounds: int = 2) -> ClusterJob:
    policy = load_policy(bundled_policy("adult"))[0]
    return make_job(policy_features(policy, FEATURES), k=3, epsilon=epsilon, rounds=rounds)


def _run(out: Path, received: list[Message] | None = None, node_config=None, **extra: object):
    cfg = _cfg(out, **extra)
    wrap = (lambda g: RecordingGrid(g, received)) if received is not None else None
    result = cluster(cfg, _job(), 2, engine="inprocess", node_config=node_config,
                     grid_wrapper=wrap)  # fmt: skip
    return cfg, result


def _folder(cfg: RunConfig, i: int) -> Path:
    return Path(cfg.out_dir) / "institutions" / f"institution-{i}"


def test_every_round_is_charged_audited_and_only_noisy_aggregates_cross(tmp_path):
    received: list[Message] = []
    cfg, result = _run(tmp_path / "out", received, **{"dp-epsilon": 1.0})  # the budget
    job, plan = _job(), plan_clustering(_job())
    # What reached the coordinator: per round, each node's noisy counts and sums.
    replies = [m for m in received if m.metadata.message_type == "query.clustering"]
    assert len(replies) == 2 * job.rounds and not any(m.has_error() for m in replies)
    for reply in replies:
        records = reply.content.config_records
        assert set(reply.content.keys()) == {"clustering", "node", "governance"}
        assert set(records["clustering"].keys()) == {"digest", "withheld", "counts", "sums"}
        counts = np.asarray(records["clustering"]["counts"])
        assert not np.allclose(counts, np.round(counts))  # noised, never exact counts
        assert reply.content.array_records == {}
    # Every round is one ledger entry of kind "clustering" under the job, and the job's
    # total is what the coordinator reports and what the plan stated.
    for i in range(2):
        ledger = PrivacyLedger.load(_folder(cfg, i) / LEDGER_NAME)
        entries = ledger.entries
        assert [e["release_kind"] for e in entries] == [CLUSTERING] * job.rounds
        assert [e["round"] for e in entries] == list(range(1, job.rounds + 1))
        assert ledger.verify() == []
        assert ledger.spent() == pytest.approx(plan.spent(), rel=2e-3)
        assert ledger.spent() <= job.epsilon
        figures = result["privacy"]["by_institution"][f"institution-{i}"]
        assert figures["epsilon_job"] == pytest.approx(ledger.spent())
        # Every reply is in the node's audit log, tied to the release its ledger charged.
        assert verify_audit_log(_folder(cfg, i) / AUDIT_NAME) == []
        records = AuditLog(_folder(cfg, i) / AUDIT_NAME).records()
        assert [r["kind"] for r in records] == ["query.clustering-reply"] * job.rounds
        before = 0.0
        for record, entry in zip(records, entries, strict=True):
            details = record["details"]
            assert isinstance(details, dict) and details["release_kind"] == CLUSTERING
            assert details["reply_to"] == entry["message_id"]
            # The round's charge: what the ledger's spend grew by with this entry.
            assert record["epsilon_charged"] == pytest.approx(entry["epsilon_after"] - before)
            before = entry["epsilon_after"]
    # The output: centroids in original units, inside the public bounds, and a plot.
    saved = json.loads((Path(cfg.out_dir) / CLUSTERS_NAME).read_text())
    assert len(saved["centroids"]) == 3 and len(saved["sizes_noisy"]) == 3
    for centre in saved["centroids"]:
        assert 17 <= centre["age"] <= 90 and 1 <= centre["hours-per-week"] <= 99
    assert saved["inertia_heldout"] > 0 and saved["heldout_rows"] > 10_000
    assert (Path(cfg.out_dir) / CLUSTERS_PLOT).stat().st_size > 0
    # The spent ledgers cannot pay for the job again: every node declines, uncharged.
    with pytest.raises(AidmpError, match="no institution answered round 1"):
        cluster(_cfg(tmp_path / "out", **{"dp-epsilon": 1.0}), _job(), 2, engine="inprocess")
    assert len(PrivacyLedger.load(_folder(cfg, 0) / LEDGER_NAME).entries) == job.rounds


def test_under_he_only_ciphertexts_cross_and_the_result_matches_plaintext(tmp_path):
    keys = tmp_path / "keys"
    simulation_keys(keys)
    received: list[Message] = []
    _, plain = _run(tmp_path / "plain")
    _, encrypted = _run(tmp_path / "he", received, he=True, **{"he-keys": str(keys)})
    replies = [m for m in received if m.metadata.message_type == "query.clustering"]
    assert replies and not any(m.has_error() for m in replies)
    for reply in replies:
        answer = reply.content.config_records["clustering"]
        assert set(answer.keys()) == {"digest", "withheld", "chunks", "fingerprint"}
        assert all(isinstance(c, bytes) and len(c) > 1000 for c in answer["chunks"])
    # Simulated noise follows the run seed, so the encrypted run released the same noisy
    # figures: its centroids differ only by the CKKS error.
    assert np.allclose(plain["centroids_scaled"], encrypted["centroids_scaled"], atol=1e-3)
    assert encrypted["he"] is True


def test_a_deployed_coordinator_has_a_site_decrypt_each_rounds_sum(tmp_path):
    """Without the researcher's key (a deployed coordinator holds the public one only),
    each round's encrypted sum is decrypted by a site that answered (`query.decrypt`,
    server/key_holder.py), which charges nothing for it; the centroids are the same."""
    from aidmp.server.clustering import run_clustering
    from aidmp.simulations.inprocess import InProcessGrid
    from aidmp.simulations.runner import prepare

    keys = tmp_path / "keys"
    simulation_keys(keys)
    _, plain = _run(tmp_path / "plain")
    cfg = prepare(_cfg(tmp_path / "he", he=True, **{"he-keys": str(keys)}), 2)
    grid, received = InProcessGrid(2), []
    result = run_clustering(RecordingGrid(grid, received), _job(), cfg,
                            run_id=str(grid.run.run_id), quiet=True)  # fmt: skip
    decrypted = [m for m in received if "decrypted" in m.content.config_records]
    assert len(decrypted) == _job().rounds
    assert np.allclose(plain["centroids_scaled"], result["centroids_scaled"], atol=1e-3)
    for i in range(2):
        ledger = PrivacyLedger.load(_folder(cfg, i) / LEDGER_NAME)
        assert [e["release_kind"] for e in ledger.entries] == [CLUSTERING] * _job().rounds


def test_the_node_cap_declines_a_job_asking_too_much(tmp_path):
    cap = {0: {"clustering-max-epsilon": 0.5}}
    cfg, result = _run(tmp_path / "out", node_config=lambda i: cap.get(i, {}))
    assert result["rounds"][0]["answered"] == ["institution-1"]
    (failure,) = result["rounds"][0]["declined"]
    assert failure["institution"] == "institution-0"
    assert failure["code"] == DeclineCode.BUDGET_EXHAUSTED
    assert "clustering-max-epsilon" in str(failure["reason"])
    path = _folder(cfg, 0) / LEDGER_NAME
    assert not path.exists() or PrivacyLedger.load(path).entries == []


def test_a_node_without_dp_releases_nothing(tmp_path):
    cfg, result = _run(tmp_path / "out", node_config=lambda i: {"dp": False} if i == 1 else {})
    (failure,) = result["rounds"][0]["declined"]
    assert failure["institution"] == "institution-1"
    assert failure["code"] == DeclineCode.PRIVACY_POLICY
    assert result["rounds"][-1]["answered"] == ["institution-0"]


def test_a_round_is_released_once_and_never_beyond_the_stated_rounds(tmp_path):
    job = _job(rounds=2)
    plan = plan_clustering(job)
    policy = DPPolicy.model_validate({"dp-epsilon": 3.0, "state_dir": tmp_path})
    points = np.random.default_rng(0).uniform(size=(200, job.dimensions))
    centroids = np.full((3, job.dimensions), 0.5)
    release = dict(policy=policy, cap=1.0, dataset_id="d", run_id="r", job_id="job-1",
                   seed=0, min_count=0)  # fmt: skip
    release_cluster_round(points, centroids, plan, server_round=1, message_id="m1", **release)
    with pytest.raises(BudgetExhausted, match="already released round 1"):
        release_cluster_round(points, centroids, plan, server_round=1, message_id="m2", **release)
    with pytest.raises(BudgetExhausted, match="states 2 rounds"):
        release_cluster_round(points, centroids, plan, server_round=3, message_id="m3", **release)
    ledger = PrivacyLedger.load(tmp_path / LEDGER_NAME)
    assert [e["message_id"] for e in ledger.entries] == ["m1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "0"], "--k must be at least 1"),
        (["--k", "3", "--task", "nope"], "nope"),
        (["--k", "3", "--features", "age,workclass"], "not a number"),
        (["--k", "3", "--features", "fnlwgt"], "fnlwgt:LOW:HIGH"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, args, message):
    result = aidmp("cluster", "--dp-epsilon", "1", "--out", str(tmp_path / "o"),
                   "--engine", "inprocess", *args)  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_a_deployed_run_carries_the_job_in_its_run_config(tmp_path):
    """`aidmp run --cluster JOB.yaml`: the job travels as the run config's `clustering`,
    and the ServerApp runs it instead of training."""
    import tomllib

    from flwr.app import Context, RecordDict

    from aidmp.cli.coordinator import cluster_run_config
    from aidmp.server.app import main as server_main
    from aidmp.simulations.inprocess import InProcessGrid

    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "k: 2\nepsilon: 1.0\nrounds: 2\nfeatures: [age:17:90, hours-per-week:1:99]\n"
    )
    out = tmp_path / "out"
    toml = cluster_run_config(f"out-dir='{out}' min-nodes=2", str(job_file), tmp_path)
    pairs = tomllib.loads(Path(toml).read_text())
    # In simulation the run config also names the governance policy, the split and the
    # DP default; a deployed node would use its own.
    run_config = pairs | {"governance-policy": str(bundled_policy("adult")), "partition": "iid",
                          "dp": True, "dp-epsilon": 1.0}  # fmt: skip
    grid = InProcessGrid(2)
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config)  # fmt: skip
    server_main(grid, context)
    result = json.loads((out / CLUSTERS_NAME).read_text())
    assert result["job"]["k"] == 2 and result["features"] == ["age", "hours-per-week"]
    assert result["rounds"][-1]["answered"] == ["institution-0", "institution-1"]
    assert not (out / "checkpoint.npz").exists()  # nothing trained


def test_a_deployed_job_states_every_bound(tmp_path):
    from aidmp.cli.coordinator import cluster_run_config

    job_file = tmp_path / "job.yaml"
    job_file.write_text("k: 2\nepsilon: 1.0\nfeatures: [age, hours-per-week:1:99]\n")
    with pytest.raises(AidmpError, match="states every bound"):
        cluster_run_config("", str(job_file), tmp_path)
