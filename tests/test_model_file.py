"""Where a site's model comes from after an encrypted job: `aidmp model decrypt` opens
the coordinator's checkpoint with the site's own key, and `aidmp model evaluate` scores
the model on the site's own governed rows. Real CKKS ciphertexts, a real federation on
the in-process grid, the real governance pipeline."""

import numpy as np
import pytest
import torch

from aidmp.config import RunConfig
from aidmp.governance.scenarios import made_up_pii
from aidmp.privacy.he.keys import INSTITUTION_FILE, key_ceremony
from aidmp.server.checkpoint import CHECKPOINT_NAME
from aidmp.simulations.runner import bundled_policy
from aidmp.tasks import get_task
from tests.inprocess_cli import aidmp
from tests.recording import run_recorded


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("model-file")
    key_ceremony(root / "keys")
    cfg = RunConfig(task="adult", partition="iid", seed=0, num_rounds=2, dp=False,
                    central_eval=False, he=True, he_keys=str(root / "keys"),
                    out_dir=str(root / "out"))  # fmt: skip
    run_recorded(cfg, 3, None, engine="inprocess")
    # A site's own rows (the held-out split's source rows: no institution trained on them).
    rows = get_task("adult").raw_test().iloc[:800].copy()
    rows["consent"] = "yes"
    rows = rows.join(made_up_pii(rows, np.random.default_rng(1)))
    rows.to_csv(root / "rows.csv", index=False)
    return root


def test_a_site_decrypts_the_final_model_and_scores_it_on_its_own_rows(job):
    ckpt, model = job / "out" / CHECKPOINT_NAME, job / "model.pt"
    keys = job / "keys" / INSTITUTION_FILE
    done = aidmp("model", "decrypt", str(ckpt), "--keys", str(keys), "--out", str(model))
    assert done.returncode == 0, done.stderr
    content = torch.load(model, weights_only=True)  # as a user loads it, no aidmp needed
    assert (content["task"], content["round"]) == ("adult", 2)
    net = get_task("adult").build_model()
    net.load_state_dict(content["state_dict"])

    scored = aidmp("model", "evaluate", str(model), "--data", str(job / "rows.csv"),
                   "--policy", str(bundled_policy("adult")))  # fmt: skip
    assert scored.returncode == 0, scored.stderr
    figures = scored.stdout.split("accuracy ")[1]
    accuracy = float(figures.split(",")[0])
    majority = float(scored.stdout.rsplit("majority class alone ", 1)[1].split()[0])
    assert accuracy > majority > 0.5  # two rounds of FedAvg beat always saying "<=50K"


def test_an_encrypted_checkpoint_needs_the_sites_key_and_refuses_another(job, tmp_path):
    ckpt = str(job / "out" / CHECKPOINT_NAME)
    keyless = aidmp("model", "decrypt", ckpt, "--out", str(tmp_path / "m.pt"))
    assert keyless.returncode == 2 and "give --keys" in keyless.stderr
    key_ceremony(tmp_path / "other")
    other = str(tmp_path / "other" / INSTITUTION_FILE)
    wrong = aidmp("model", "decrypt", ckpt, "--keys", other, "--out", str(tmp_path / "m.pt"))
    assert wrong.returncode == 2, wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and "Traceback" not in wrong.stderr
    assert not (tmp_path / "m.pt").exists()


def test_a_file_that_is_not_a_model_is_named(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a model")
    done = aidmp("model", "evaluate", str(tmp_path / "x.pt"), "--data", "rows.csv",
                 "--policy", str(bundled_policy("adult")))  # fmt: skip
    assert done.returncode == 2 and "not a model file aidmp wrote" in done.stderr


def _final_model_message(cfg: RunConfig, job_id: str):
    from flwr.app import ArrayRecord, Message, RecordDict

    from aidmp.round_config import RECORD_NAME
    from aidmp.server.round_settings import round_config_for

    torch.manual_seed(0)
    arrays = ArrayRecord(get_task("adult").build_model().state_dict())
    content = RecordDict({RECORD_NAME: round_config_for(cfg, 4, job_id), "arrays": arrays})
    return Message(content, dst_node_id=3, message_type="query.final_model")


def test_a_site_keeps_the_final_model_and_a_simulated_institution_does_not(job, tmp_path):
    """The end of a deployed job (server/final_model.py): the site keeps the model in its
    state folder; the reply says only whether it did; the audit log records the reply."""
    from flwr.app import Context, RecordDict

    from aidmp.client.app import app
    from aidmp.client.final_model import kept_model_path
    from aidmp.privacy.audit import AUDIT_NAME

    cfg = RunConfig(task="adult", dp=False, out_dir=str(tmp_path / "coordinator"))
    site = {"data": str(job / "rows.csv"), "policy": str(bundled_policy("adult")),
            "state-dir": str(tmp_path / "state"), "name": "site-a", "dp": False}  # fmt: skip

    def context(node: dict) -> Context:
        return Context(run_id=5, node_id=3, node_config=node, state=RecordDict(), run_config={})

    reply = app(_final_model_message(cfg, "job-1"), context(site))
    assert not reply.has_error() and reply.content.config_records["node"]["model-kept"] is True
    kept = torch.load(kept_model_path(tmp_path / "state", "job-1"), weights_only=True)
    assert (kept["task"], kept["round"], kept["job_id"]) == ("adult", 4, "job-1")
    assert "query.final_model-reply" in (tmp_path / "state" / AUDIT_NAME).read_text()

    simulated = {"partition-id": 0, "num-partitions": 3}
    reply = app(_final_model_message(cfg, "job-2"), context(simulated))
    assert reply.content.config_records["node"]["model-kept"] is False
