"""Checkpoints round-trip, are written atomically, and fail loudly when corrupt."""

import numpy as np
import pytest

from aidmp.atomic import atomic_write_bytes
from aidmp.errors import AidmpError
from aidmp.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    path = tmp_path / "ckpt.npz"
    model = {"0.weight": np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)}
    state = {"momentum.0": np.ones(3)}
    save_checkpoint(path, Checkpoint(4, model, state, {"per_round": [{"round": 4}]}))
    back = load_checkpoint(path)
    assert back.round == 4
    np.testing.assert_array_equal(back.model["0.weight"], model["0.weight"])
    np.testing.assert_array_equal(back.strategy_state["momentum.0"], state["momentum.0"])
    assert back.meta["per_round"] == [{"round": 4}]


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"one")
    atomic_write_bytes(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(b"not a zip file")
    with pytest.raises(AidmpError, match="unreadable.*restore it from a backup"):
        load_checkpoint(path)


def test_missing_checkpoint_says_how_to_start(tmp_path):
    with pytest.raises(AidmpError, match="without resume"):
        load_checkpoint(tmp_path / "nope.npz")


def test_a_crash_in_round_one_leaves_the_job_on_record_for_resume(tmp_path):
    from aidmp.config import RunConfig
    from aidmp.server.checkpoint import CHECKPOINT_NAME
    from aidmp.server.federation import run_federation

    class Gone:  # the SuperLink is lost as round 1 begins
        def get_node_ids(self):
            raise ConnectionError("SuperLink gone")

    cfg = RunConfig(task="breast-cancer", out_dir=str(tmp_path), central_eval=False, dp=False)
    with pytest.raises(ConnectionError):
        run_federation(Gone(), cfg, run_id="41")
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt.round == 0 and ckpt.meta["job_id"] == "41"
    with pytest.raises(ConnectionError):  # restarted, resumed, and lost again
        run_federation(Gone(), cfg.model_copy(update={"resume": True}), run_id="42")
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt.meta["job_id"] == "41"  # the same job, under a second Flower run
    assert ckpt.meta["runs"] == [
        {"run_id": "41", "first_round": 1}, {"run_id": "42", "first_round": 1}
    ]  # fmt: skip


def test_a_new_job_in_the_same_folder_keeps_the_old_checkpoint(tmp_path):
    """A restarted coordinator that forgets --resume must not lose the job it stopped."""
    from aidmp.config import RunConfig
    from aidmp.server.checkpoint import CHECKPOINT_NAME
    from aidmp.server.federation import run_federation

    class Gone:
        def get_node_ids(self):
            raise ConnectionError("SuperLink gone")

    cfg = RunConfig(task="breast-cancer", out_dir=str(tmp_path), central_eval=False, dp=False)
    for run_id in ("41", "42"):
        with pytest.raises(ConnectionError):
            run_federation(Gone(), cfg, run_id=run_id)
    (kept,) = tmp_path.glob("checkpoint.*.npz")
    assert load_checkpoint(kept).meta["job_id"] == "41"
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME).meta["job_id"] == "42"
