"""One budget per population (DESIGN.md, "Differential privacy"): the ledger is keyed to the
institution's data source, an admin reset is serialized with the releases, and every
release from private rows, the evaluation figures included, is charged to it."""

import contextlib
import hashlib
import json
import threading

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict

from aidmp.client.app import app
from aidmp.client.data import dataset_id, ledger_key, simulated_institution
from aidmp.config import RunConfig
from aidmp.errors import AidmpError, PrivacyError
from aidmp.privacy.ledger import (
    KEYED_TO_SOURCE,
    LEDGER_NAME,
    REGISTRY_NAME,
    Charge,
    PrivacyLedger,
    reset_ledger,
)
from aidmp.round_config import RoundConfig
from aidmp.server.round_settings import round_config_for
from aidmp.simulations.runner import bundled_policy
from aidmp.tasks import get_task

# --- a node with its own data: real UCI Adult rows, the bundled policy ---------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    rows = get_task("adult").raw_train().iloc[:800].copy()
    rows["consent"] = ["no"] * 100 + ["yes"] * 700  # the first hundred have not consented
    rows.to_csv(folder / "rows.csv", index=False)
    policy = bundled_policy("adult").read_text()
    (folder / "policy.yaml").write_text(policy)
    # The admin's edit: the hundred now count as consented (a new consent form), so the
    # governed rows are others; the people, the file's, are the same.
    edited = policy.replace('accepted: ["yes"]', 'accepted: ["yes", "no"]')
    assert edited != policy
    (folder / "policy-edited.yaml").write_text(edited)
    return folder


def _node(site, state, policy="policy.yaml", **extra):
    return {
        "name": "hospital-a",
        "data": str(site / "rows.csv"),
        "policy": str(site / policy),
        "state-dir": str(state),
        "dp": True,
        "dp-epsilon": 3.0,
    } | extra


def _message(site, kind, rnd, num_rounds=3, **cfg):
    run = RunConfig(**({"task": "adult", "out_dir": str(site / "run"), "num_rounds": num_rounds}
                       | cfg))  # fmt: skip
    torch.manual_seed(0)
    model = get_task("adult").build_model()
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": round_config_for(run, rnd, "job")}
    )
    return Message(content, dst_node_id=4, message_type=kind)


def _call(msg, node_config, run_id=9):
    context = Context(run_id=run_id, node_id=4, node_config=node_config, state=RecordDict(),
                      run_config={})  # fmt: skip
    return app(msg, context)  # the whole ClientApp: the audit trail included


def _ok(reply):
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    return reply


def test_a_policy_edit_keeps_charging_the_same_ledger(site, tmp_path):
    _ok(_call(_message(site, "train", 1), _node(site, tmp_path)))
    before = PrivacyLedger.load(tmp_path / LEDGER_NAME)
    # Another policy file, other governed rows, the same data file: the same ledger.
    reply = _ok(_call(_message(site, "train", 2), _node(site, tmp_path, "policy-edited.yaml")))
    after = PrivacyLedger.load(tmp_path / LEDGER_NAME)
    assert after.dataset == before.dataset and after.keyed_to_source
    assert [e["round"] for e in after.entries if e["release_kind"] == "training"] == [1, 2]
    assert reply.content["node"]["epsilon-spent"] == pytest.approx(after.spent())
    assert after.verify() == []


def test_the_key_is_the_source_not_its_content_and_a_node_may_name_it(site, tmp_path):
    cfg = RoundConfig.from_record(round_config_for(RunConfig(task="adult"), 1))
    node = _node(site, tmp_path)
    key = ledger_key(node, cfg)
    assert key.startswith("source:") and str(site) not in key  # no local path in it
    assert ledger_key(node | {"policy": "elsewhere.yaml"}, cfg) == key
    other_task = RoundConfig.from_record(round_config_for(RunConfig(task="mnist"), 1))
    assert ledger_key(node, other_task) != key
    assert ledger_key(node | {"dataset-id": "admissions-2019"}, cfg) == "admissions-2019"


def test_a_simulated_institutions_key_is_what_it_was(tmp_path):
    """No fresh budgets for existing simulation folders: the key is the fingerprint of
    the institution's split, as before."""
    run = RunConfig(task="breast-cancer", partition="iid", seed=4)
    cfg = RoundConfig.from_record(round_config_for(run, 1))
    node = {"partition-id": 1, "num-partitions": 3}
    data = simulated_institution("breast-cancer", "iid", 4, 3, 1)
    digest = hashlib.sha256(b"breast-cancer")
    digest.update(data.x_train.tobytes())
    digest.update(data.y_train.tobytes())
    assert ledger_key(node, cfg) == dataset_id("breast-cancer", data) == digest.hexdigest()


def _old_ledger(folder, dataset, entries=1):
    """A ledger as nodes wrote it before it was keyed to the source: keyed to the governed
    rows' fingerprint, no `keyed_to`, and a registry of fingerprints."""
    ledger = PrivacyLedger.open(folder, dataset=dataset, budget_epsilon=3.0, delta=1e-5)
    for i in range(entries):
        ledger.charge(Charge(1.2, 0.05, 20), run_id="old", round=i + 1, message_id=f"old-{i}")
    doc = json.loads((folder / LEDGER_NAME).read_text())
    del doc["body"]["keyed_to"]
    doc["sha256"] = hashlib.sha256(json.dumps(doc["body"], sort_keys=True).encode()).hexdigest()
    (folder / LEDGER_NAME).write_text(json.dumps(doc))
    (folder / REGISTRY_NAME).write_text(json.dumps({"datasets": [dataset]}))
    return PrivacyLedger.load(folder / LEDGER_NAME)


def test_an_old_fingerprint_ledger_moves_to_the_source_key_and_keeps_its_spend(site, tmp_path):
    old = _old_ledger(tmp_path, "f" * 64, entries=2)
    assert not old.keyed_to_source
    _ok(_call(_message(site, "train", 1), _node(site, tmp_path)))
    ledger = PrivacyLedger.load(tmp_path / LEDGER_NAME)
    assert ledger.keyed_to_source and ledger.dataset.startswith("source:")
    assert [e["run_id"] for e in ledger.entries][:2] == ["old", "old"]  # nothing forgotten
    assert ledger.spent() > old.spent()
    (change,) = ledger.dataset_changes
    assert (change["from"], change["to"], change["entries"]) == ("f" * 64, ledger.dataset, 2)
    assert ledger.verify() == []
    registry = json.loads((tmp_path / REGISTRY_NAME).read_text())
    assert ledger.dataset in registry["datasets"] and registry["keyed_to"] == KEYED_TO_SOURCE


def test_a_ledger_keyed_to_another_source_is_still_refused(tmp_path):
    PrivacyLedger.open(tmp_path, dataset="source:a", budget_epsilon=3.0, delta=1e-5)
    with pytest.raises(PrivacyError, match="belongs to other data"):
        PrivacyLedger.open(tmp_path, dataset="source:b", budget_epsilon=3.0, delta=1e-5)


def test_a_deleted_old_ledger_is_not_a_fresh_budget_under_a_new_key(tmp_path):
    _old_ledger(tmp_path, "f" * 64)
    (tmp_path / LEDGER_NAME).unlink()
    with pytest.raises(PrivacyError, match="missing, but this node has trained"):
        PrivacyLedger.open(tmp_path, dataset="source:x", budget_epsilon=3.0, delta=1e-5)
    reset_ledger(tmp_path, reason="test: ledger lost, data re-collected", who="admin")
    assert PrivacyLedger.open(tmp_path, dataset="source:x", budget_epsilon=3.0, delta=1e-5)


# --- an admin reset is serialized with the releases -------------------------------------


def test_a_reset_during_a_charge_is_never_undone_by_it(tmp_path, monkeypatch):
    """A release opens the ledger (under its lock), and while it trains an admin resets.
    Without the lock the release would write the old ledger back, its charge with it, over
    the reset. With it, the reset waits: the charge lands in the ledger it sets aside."""
    import aidmp.privacy.node_round as node_round
    from aidmp.privacy.policy import DPPolicy
    from aidmp.tasks.data import LocalData

    _old = PrivacyLedger.open(tmp_path, dataset="d" * 64, budget_epsilon=20.0, delta=1e-5)
    _old.charge(Charge(1.5, 0.1, 10), run_id="earlier", round=1)
    opened = threading.Barrier(2, timeout=5.0)
    real_open = node_round.open_ledger

    def open_then_wait(*args, **kwargs):
        ledger = real_open(*args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            opened.wait()  # the admin starts the reset now, while this release trains
        return ledger

    monkeypatch.setattr(node_round, "open_ledger", open_then_wait)
    data = get_task("breast-cancer").load()
    local = LocalData(data.x_train[:200], data.y_train[:200], data.x_test, data.y_test)
    policy = DPPolicy.model_validate(
        {"dp-epsilon": 20.0, "dp-noise-multiplier": 1.5, "state_dir": tmp_path}
    )

    def release() -> None:
        node_round.train_private_round(
            get_task("breast-cancer").build_model(), local, policy=policy, dataset_id="d" * 64,
            run_id="r", server_round=1, num_rounds=1, epochs=1, batch_size=32,
            learning_rate=0.1, seed=0, job_id="job", message_id="m1",
        )  # fmt: skip

    kept = []

    def admin() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            opened.wait()
        kept.append(reset_ledger(tmp_path, reason="test: new study", who="admin"))

    threads = [threading.Thread(target=release), threading.Thread(target=admin)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (aside,) = kept
    # The reset stands, and the charge is in the ledger it set aside: nothing lost.
    assert not (tmp_path / LEDGER_NAME).exists()
    assert aside is not None
    assert [e["message_id"] for e in PrivacyLedger.load(aside).entries] == ["", "m1"]
    fresh = PrivacyLedger.open(tmp_path, dataset="d" * 64, budget_epsilon=20.0, delta=1e-5)
    assert fresh.entries == []


# --- under DP the evaluation figures are releases: noised, charged, or withheld ----------

SIM = {"partition-id": 0, "num-partitions": 3}


def _sim_message(tmp_path, kind, rnd, **cfg):
    run = RunConfig(**({"task": "breast-cancer", "partition": "iid", "num_rounds": 3,
                        "out_dir": str(tmp_path / "out")} | cfg))  # fmt: skip
    torch.manual_seed(0)
    model = get_task("breast-cancer").build_model()
    content = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "config": round_config_for(run, rnd, "job")}
    )
    return Message(content, dst_node_id=4, message_type=kind)


def _sim_ledger(tmp_path):
    return PrivacyLedger.load(tmp_path / "out" / "institutions" / "institution-0" / LEDGER_NAME)


def test_a_dp_nodes_train_reply_carries_no_training_loss(tmp_path):
    reply = _ok(_call(_sim_message(tmp_path, "train", 1), SIM))
    assert set(reply.content["metrics"]) == {"num-examples", "client-weight"}
    # Flower's FedAvg still takes it: the weight is all it needs.
    from flwr.serverapp.strategy import FedAvg

    arrays, metrics = FedAvg().aggregate_train(1, [reply])
    assert arrays is not None and metrics is not None
    without_dp = _ok(_call(_sim_message(tmp_path, "train", 1, dp=False), SIM))
    assert "train-loss" in without_dp.content["metrics"]  # no DP: as before


def test_each_evaluation_is_one_gaussian_entry_with_its_message_and_audit(tmp_path):
    from aidmp.privacy.audit import AUDIT_NAME, AuditLog
    from aidmp.privacy.metrics import LOSS_BOUND

    ids = []
    for rnd in (1, 2):
        msg = _sim_message(tmp_path, "evaluate", rnd)
        reply = _ok(_call(msg, SIM))
        ids.append(msg.metadata.message_id)
        metrics, node = reply.content["metrics"], reply.content["node"]
        n, sigma = metrics["num-examples"], node["noise-multiplier"]
        assert metrics["eval-accuracy-std"] == pytest.approx(sigma / n)
        assert metrics["eval-loss-std"] == pytest.approx(sigma * LOSS_BOUND / n)
        assert node["epsilon-round"] > 0 and node["release"] == 1
    entries = _sim_ledger(tmp_path).entries
    assert [(e["mechanism"], e["release_kind"], e["round"]) for e in entries] == [
        ("gaussian", "metrics", 1), ("gaussian", "metrics", 2),
    ]  # fmt: skip
    assert [e["message_id"] for e in entries] == ids
    assert all((e["noise_std"], e["sensitivity"], e["count"]) == (sigma, 1.0, 2) for e in entries)
    # The audit log names the same message, the ε it charged and the release kind.
    audit = AuditLog(tmp_path / "out" / "institutions" / "institution-0" / AUDIT_NAME).records()
    evaluated = [r for r in audit if r["kind"] == "evaluate-reply"]
    assert [r["details"]["reply_to"] for r in evaluated] == ids
    assert {r["details"]["release_kind"] for r in evaluated} == {"metrics"}
    spent = [0.0] + [e["epsilon_after"] for e in entries]
    assert [r["epsilon_charged"] for r in evaluated] == pytest.approx(
        [b - a for a, b in zip(spent, spent[1:], strict=False)]
    )
    # A coordinator asking again for round 2 gets no second draw to average.
    again = _ok(_call(_sim_message(tmp_path, "evaluate", 2), SIM))
    assert "eval-accuracy" not in again.content["metrics"]
    assert len(_sim_ledger(tmp_path).entries) == 2


def test_the_figures_are_unbiased_with_the_stated_std():
    from aidmp.privacy.metrics import noisy_metrics
    from aidmp.privacy.noise import SecureRandom, SeededRandom

    n, correct, loss_sum, sigma = 400, 300.0, 160.0, 50.0
    for random in (SeededRandom(0), SecureRandom()):
        draws = [noisy_metrics(correct, loss_sum, n, sigma, random) for _ in range(4000)]
        acc = np.array([d.accuracy for d in draws])
        loss = np.array([d.loss for d in draws])
        stated = draws[0].accuracy_std
        assert stated == sigma / n and draws[0].loss_std == sigma * 10.0 / n
        assert acc.std() == pytest.approx(stated, rel=0.05)
        assert loss.std() == pytest.approx(draws[0].loss_std, rel=0.05)
        assert abs(acc.mean() - correct / n) < 4 * stated / np.sqrt(len(acc))
        assert abs(loss.mean() - loss_sum / n) < 4 * draws[0].loss_std / np.sqrt(len(loss))
        assert abs(np.corrcoef(acc, loss)[0, 1]) < 0.1  # two independent noises


def test_the_noised_figures_are_the_exact_ones_plus_noise_of_that_std(tmp_path):
    """Seeded (a simulated institution): the evaluation's exact figures, and the noised
    ones a node sends, within a few stated stds and never equal."""
    from aidmp.privacy.metrics import bounded_sums

    metrics = _ok(_call(_sim_message(tmp_path, "evaluate", 1), SIM)).content["metrics"]
    data = simulated_institution("breast-cancer", "iid", 0, 3, 0)
    torch.manual_seed(0)  # the model _sim_message sent
    correct, loss_sum = bounded_sums(get_task("breast-cancer").build_model(), data.x_val,
                                     data.y_val)  # fmt: skip
    n = len(data.y_val)
    assert metrics["num-examples"] == n
    for key, exact in (("eval-accuracy", correct / n), ("eval-loss", loss_sum / n)):
        z = (metrics[key] - exact) / metrics[f"{key}-std"]
        assert metrics[key] != exact and abs(z) < 5


def _sigma_spending(shape, epsilon):
    """The training σ with which one round of `shape` costs `epsilon` (of δ 1e-5)."""
    from aidmp.privacy.ledger import epsilon_of

    lo, hi = 0.3, 30.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if epsilon_of([shape.charge(mid)], 1e-5) > epsilon else (lo, mid)
    return hi


def test_a_node_that_cannot_afford_its_figures_withholds_them_and_still_replies(tmp_path):
    """The plan leaves room for the figures; a node whose training σ is fixed (its
    policy's dp-noise-multiplier) can spend the room on training, and then has none."""
    from aidmp.privacy.dp import RoundShape

    data = simulated_institution("breast-cancer", "iid", 0, 3, 0)
    sigma = _sigma_spending(RoundShape.of(len(data.y_train), 64, 1), 2.999)
    cfg = {"dp_noise_multiplier": sigma, "num_rounds": 1}
    _ok(_call(_sim_message(tmp_path, "train", 1, **cfg), SIM))
    before = _sim_ledger(tmp_path).entries
    reply = _ok(_call(_sim_message(tmp_path, "evaluate", 1, **cfg), SIM))
    assert set(reply.content["metrics"]) == {"num-examples", "client-weight"}
    assert "epsilon-spent" not in reply.content["node"]
    assert _sim_ledger(tmp_path).entries == before  # nothing charged
    # Valid for Flower's FedAvg, and for the coordinator beside a node that did send.
    from flwr.serverapp.strategy import FedAvg

    from aidmp.server.rounds import federated_figure

    assert FedAvg().aggregate_evaluate(1, [reply]) is not None
    sent = _ok(_call(_sim_message(tmp_path / "other", "evaluate", 1), SIM))
    value, std = federated_figure([reply, sent], "eval-accuracy", "num-examples")
    assert value == sent.content["metrics"]["eval-accuracy"]
    assert std == pytest.approx(sent.content["metrics"]["eval-accuracy-std"])


def test_a_node_whose_policy_withholds_figures_sends_none_and_spends_nothing(tmp_path):
    reply = _ok(_call(_sim_message(tmp_path, "evaluate", 1, dp_metrics="withheld"), SIM))
    assert set(reply.content["metrics"]) == {"num-examples", "client-weight"}
    assert not (tmp_path / "out" / "institutions" / "institution-0" / LEDGER_NAME).exists()


def test_training_and_figures_of_a_whole_run_end_within_budget(tmp_path):
    """σ is planned with the run's figures in: after every round's update and every
    round's evaluation the ledger is at, not over, the budget; and the training σ is
    only a little higher than with the figures withheld."""
    rounds = 4
    sigmas = {}
    for metrics in ("noised", "withheld"):
        base = tmp_path / metrics
        for rnd in range(1, rounds + 1):
            node = _ok(_call(_sim_message(base, "train", rnd, num_rounds=rounds,
                                          dp_metrics=metrics), SIM)).content["node"]  # fmt: skip
            _ok(_call(_sim_message(base, "evaluate", rnd, num_rounds=rounds,
                                   dp_metrics=metrics), SIM))  # fmt: skip
        sigmas[metrics] = node["noise-multiplier"]
        ledger = _sim_ledger(base)
        kinds = [e["release_kind"] for e in ledger.entries]
        expected = ["training", "metrics"] if metrics == "noised" else ["training"]
        assert kinds == expected * rounds
        assert 0.97 * 3.0 < ledger.spent() <= 3.0 + 1e-9
        assert ledger.verify() == []
    assert sigmas["withheld"] < sigmas["noised"] < 1.05 * sigmas["withheld"]


def test_the_coordinator_shows_noisy_figures_with_their_noise():
    from aidmp.server.federation import _progress_line
    from aidmp.server.rounds import RoundRecord

    rec = RoundRecord(round=3, federated_accuracy=0.8412, federated_accuracy_std=0.0101,
                      federated_loss=0.35, federated_loss_std=0.05, eval_withheld=1)  # fmt: skip
    line = _progress_line(rec, 10, 12.0)
    assert "fed-acc 0.8412 ± 0.0101 (DP)" in line and "acc 0.8412 ± 0.0101 (DP)" in line
    assert "withheld by 1" in line
    assert rec.as_dict()["accuracy_std"] == 0.0101
    rec.central_accuracy, rec.central_loss = 0.85, 0.3  # the coordinator's own: exact
    assert rec.as_dict()["accuracy_std"] is None
    assert "acc 0.8500  loss 0.3000" in _progress_line(rec, 10, 12.0)


def test_node_start_names_the_dataset_and_the_metrics_choice(site, tmp_path):
    """`aidmp node start --dataset-id ... --dp-metrics withheld`, as the node parses it."""
    from flwr.common.config import parse_config_args

    from aidmp.client.supernode import node_config
    from aidmp.privacy.policy import resolve_node_privacy

    text = node_config(data=site / "rows.csv", policy=site / "policy.yaml", keys=None,
                       state_dir=tmp_path, name="hospital-a", dp_epsilon=3.0,
                       dataset_id="admissions 2019", dp_metrics="withheld")  # fmt: skip
    node = parse_config_args([text])
    cfg = RoundConfig.from_record(round_config_for(RunConfig(task="adult"), 1))
    assert ledger_key(node, cfg) == "admissions 2019"
    privacy = resolve_node_privacy(node, cfg, "hospital-a")
    assert privacy.policy is not None and privacy.policy.metrics == "withheld"
    assert privacy.refused == ("dp-metrics=noised",)  # the run's ask; the node decides
    with pytest.raises(AidmpError, match="dataset-id"):
        node_config(data=site / "rows.csv", policy=site / "policy.yaml", keys=None,
                    state_dir=tmp_path, name="a", dp_epsilon=3.0, dataset_id=" ")  # fmt: skip


def test_node_start_passes_every_dp_setting_it_takes(site, tmp_path, monkeypatch):
    """`aidmp node start --dp-noise-multiplier 1.5 --dp-distributed-max-nodes 5`: both
    reach the node config (the second was once accepted and dropped), and a fixed σ is
    the node's own: the run's planned σ does not move it."""
    from flwr.common.config import parse_config_args

    import aidmp.client.supernode as supernode
    from aidmp.privacy.policy import resolve_node_privacy
    from tests.inprocess_cli import aidmp

    made: list[str] = []

    def capture(**kw: object) -> str:
        made.append(real(**kw))
        raise AidmpError("captured")

    real = supernode.node_config
    monkeypatch.setattr(supernode, "node_config", capture)
    done = aidmp("node", "start", "--superlink", "127.0.0.1:1", "--insecure",
                 "--data", str(site / "rows.csv"), "--policy", str(site / "policy.yaml"),
                 "--ledger", str(tmp_path / "state"), "--dp-epsilon", "3",
                 "--dp-noise-multiplier", "1.5", "--dp-distributed-max-nodes", "5")  # fmt: skip
    assert done.returncode == 2 and "captured" in done.stderr
    node = parse_config_args(made)
    assert node["dp-noise-multiplier"] == 1.5 and node["dp-distributed-max-nodes"] == 5
    cfg = RoundConfig.from_record(round_config_for(RunConfig(task="adult"), 1))
    policy = resolve_node_privacy(node, cfg, "site").policy
    assert policy is not None and policy.noise_multiplier == 1.5
    with pytest.raises(AidmpError, match="must be > 0"):
        real(data=site / "rows.csv", policy=site / "policy.yaml", keys=None,
             state_dir=tmp_path, name="a", dp_epsilon=3.0, noise_multiplier=0.0)  # fmt: skip


def test_a_round_line_says_why_a_round_was_skipped_and_what_is_left():
    from aidmp.server.closing import closing_lines
    from aidmp.server.federation import _progress_line
    from aidmp.server.rounds import RoundRecord

    rec = RoundRecord(round=2, train_replies=2, aggregated=False, elapsed_s=30.0)
    line = _progress_line(rec, 5, 60.0, min_nodes=3, eta_s=90.0)
    assert "[skipped: 2 usable update(s), 3 needed; the model is kept]" in line
    assert "about 90s to go" in line
    skipped = rec.as_dict() | {"privacy": {"site-0": {"epsilon-spent": 1.0, "delta": 1e-5}}}
    privacy = {"dp": True, "epsilon_by_institution": {"site-0": 1.0}, "delta": 1e-5}
    report = {"job_id": "j", "task": "adult", "strategy": "fedavg", "privacy": privacy,
              "per_round": [RoundRecord(round=1, aggregated=True).as_dict(), skipped],
              "final": {"accuracy": 0.8, "loss": 0.4, "source": "federated"}}  # fmt: skip
    lines = closing_lines(report, {"summary": "out/summary.json"})
    assert lines[0] == "job j (adult, fedavg): 1 of 2 round(s) aggregated, 1 skipped (round 2)"
    assert "site-0 spent privacy budget on skipped round(s)" in lines[1]
    assert lines[-1] == "summary: out/summary.json"


def test_a_deployed_job_has_a_summary_and_a_plot_without_a_partition(tmp_path):
    from aidmp.server.closing import deployment_summary
    from aidmp.server.plots import plot_metrics
    from aidmp.server.rounds import RoundRecord

    spend = {"epsilon-spent": 1.0, "delta": 1e-5}
    first = RoundRecord(round=1, aggregated=True, federated_accuracy=0.8,
                        privacy={"site-0": spend, "site-1": spend})  # fmt: skip
    skipped = RoundRecord(round=2, aggregated=False, privacy={"site-1": spend})
    rounds = [first.as_dict(), skipped.as_dict()]
    report = {"task": "adult", "strategy": "fedavg", "run_config": {}, "job_id": "j",
              "per_round": rounds, "privacy": {"dp": True}, "he": {"enabled": False},
              "governance": {}, "final": {}, "resumed_from_round": None}  # fmt: skip
    summary = deployment_summary(report, 12.0)
    assert summary["institution_names"] == ["site-0", "site-1"]
    assert (summary["skipped_rounds"], summary["charged_in_skipped_rounds"]) == ([2], ["site-1"])
    plot_metrics(summary, tmp_path / "metrics.png")
    assert (tmp_path / "metrics.png").read_bytes()[:4] == b"\x89PNG"
