"""Empirical privacy audit: membership inference against a finished run's final model.

Two attacks. The loss-threshold attack (Yeom et al., 2018): a model's loss is
lower on rows it trained on. The reference-calibrated attack (Watson et al., 2022;
Ye et al., 2022): some rows are simply hard, so score each row by how much lower
the target's loss is than that of a reference model trained, the same way, on
population data that holds neither the members nor the non-members. The held-out
split is cut in two for this: one half trains the reference, the other half are
the non-members. Scoring every row by its negative loss, we measure how well the score
separates each institution's training rows (members) from the task's held-out rows
(non-members, which no institution ever trained on). ROC AUC near 0.5 means the
attacker does no better than chance; TPR at 1% FPR is the figure the literature
(Carlini et al., 2022) asks for, since it is what a confident attacker achieves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import nn

from aidmp.atomic import atomic_write_json
from aidmp.errors import AidmpError
from aidmp.server.checkpoint import CHECKPOINT_NAME, load_checkpoint
from aidmp.tasks import get_task, load_dataset
from aidmp.tasks.partition import institution_data

AUDIT_NAME = "privacy_audit.json"


@torch.no_grad()
def per_example_loss(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    model.eval()
    logits = model(torch.as_tensor(x, dtype=torch.float32))
    loss = nn.functional.cross_entropy(
        logits, torch.as_tensor(y, dtype=torch.long), reduction="none"
    )
    return loss.numpy()


ATTACKS = ("loss", "calibrated")


def _reference_model(summary: dict[str, Any], x: np.ndarray, y: np.ndarray) -> nn.Module:
    """The task's model trained on population rows, as long as one institution trains."""
    cfg = summary["run_config"]
    task = get_task(summary["task"])
    torch.manual_seed(summary["seed"])
    model = task.build_model()
    task.train(
        model,
        x,
        y,
        epochs=cfg["num-rounds"] * cfg["local-epochs"],
        batch_size=cfg["batch-size"],
        learning_rate=cfg["learning-rate"],
        seed=summary["seed"],
    )
    return model


def _scores(
    target: nn.Module, reference: nn.Module, x: np.ndarray, y: np.ndarray
) -> dict[str, np.ndarray]:
    """Membership scores, higher = more likely a member."""
    target_loss = per_example_loss(target, x, y)
    return {
        "loss": -target_loss,
        "calibrated": per_example_loss(reference, x, y) - target_loss,
    }


def attack_metrics(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> dict[str, float]:
    """ROC AUC and TPR at 1% FPR of an attack that calls high scores members."""
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    scores = np.r_[member_scores, nonmember_scores]
    fpr, tpr, _ = roc_curve(labels, scores)
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "tpr_at_1pct_fpr": float(np.interp(0.01, fpr, tpr)),
        "members": len(member_scores),
        "non_members": len(nonmember_scores),
    }


def matched_samples(
    member_scores: np.ndarray,
    member_y: np.ndarray,
    nonmember_scores: np.ndarray,
    nonmember_y: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """As many members as non-members within each class.

    Under label skew an institution's rows differ from the held-out rows by label, and
    loss differs by label too; matching classes keeps the attack about membership.
    """
    members, nonmembers = [], []
    for cls in np.unique(member_y):
        m, n = member_scores[member_y == cls], nonmember_scores[nonmember_y == cls]
        k = min(len(m), len(n))
        members.append(rng.choice(m, k, replace=False))
        nonmembers.append(rng.choice(n, k, replace=False))
    return np.concatenate(members), np.concatenate(nonmembers)


def audit_run(run_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Attack the final model of the simulation in `run_dir`; writes privacy_audit.json."""
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise AidmpError(
            f"{run_dir} holds no summary.json; give the --out folder of `aidmp simulate`"
        )
    summary = json.loads(summary_path.read_text())
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    task, data = get_task(summary["task"]), load_dataset(summary["task"])
    model = task.build_model()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in ckpt.model.items()})

    rng = np.random.default_rng(seed)
    reference_rows, nonmember_rows = np.array_split(rng.permutation(len(data.y_test)), 2)
    reference = _reference_model(summary, data.x_test[reference_rows], data.y_test[reference_rows])
    x_non, y_non = data.x_test[nonmember_rows], data.y_test[nonmember_rows]
    non_scores = _scores(model, reference, x_non, y_non)

    by_institution: dict[str, dict[str, Any]] = {}
    pooled: dict[str, list[np.ndarray]] = {"loss": [], "calibrated": [], "y": []}
    for i in range(summary["institutions"]):
        local = institution_data(
            data, summary["institutions"], summary["partition"], summary["seed"], i
        )
        scores = _scores(model, reference, local.x_train, local.y_train)
        by_institution[f"institution-{i}"] = {
            attack: attack_metrics(
                *matched_samples(scores[attack], local.y_train, non_scores[attack], y_non, rng)
            )
            for attack in ATTACKS
        }
        for attack in ATTACKS:
            pooled[attack].append(scores[attack])
        pooled["y"].append(local.y_train)
    y_members = np.concatenate(pooled["y"])
    overall = {
        attack: attack_metrics(
            *matched_samples(
                np.concatenate(pooled[attack]), y_members, non_scores[attack], y_non, rng
            )
        )
        for attack in ATTACKS
    }
    privacy = summary.get("privacy", {})
    report = {
        "attacks": list(ATTACKS),
        "run": str(run_dir),
        "task": summary["task"],
        "dp": privacy.get("dp", False),
        "claimed_epsilon_by_institution": privacy.get("epsilon_by_institution", {}),
        "delta": privacy.get("delta"),
        "final_accuracy": summary["final"]["accuracy"],
        "overall": overall,
        "by_institution": by_institution,
    }
    atomic_write_json(run_dir / AUDIT_NAME, report)
    return report
