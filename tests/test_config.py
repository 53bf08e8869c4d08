"""The run config: pyproject's Flower defaults match the model; bad keys name the fix."""

import tomllib
from pathlib import Path

import pytest

from aidmp.config import RunConfig
from aidmp.errors import AidmpError

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_defaults_equal_runconfig_defaults():
    flower_defaults = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert flower_defaults == RunConfig().to_flower()
    assert RunConfig.from_flower(flower_defaults) == RunConfig()


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(AidmpError, match="unknown run-config key.*num-round.*valid keys are"):
        RunConfig.from_flower({"num-round": 3})


def test_bad_value_names_the_key():
    with pytest.raises(AidmpError, match="num-rounds"):
        RunConfig.from_flower({"num-rounds": 0})
    with pytest.raises(AidmpError, match="strategy"):
        RunConfig.from_flower({"strategy": "fedsgd"})


def test_min_nodes_above_min_available_nodes_is_refused():
    with pytest.raises(AidmpError, match="min-nodes=3 is more than min-available-nodes=1"):
        RunConfig.from_flower({"min-nodes": 3, "min-available-nodes": 1})


def test_an_encrypted_query_or_clustering_job_needs_keys_not_training_settings():
    """`aidmp run --analysis Q.yaml --run-config "he=true he-keys=..."`: a job that trains
    no model is not refused for the training defaults (central-eval, strategy)."""
    for job in ({"analysis": "{}"}, {"clustering": "{}"}):
        cfg = RunConfig.from_flower({"he": True, "he-keys": "k", "strategy": "median", **job})
        assert cfg.he and cfg.central_eval
        with pytest.raises(AidmpError, match="needs he-keys"):
            RunConfig.from_flower({"he": True, **job})
    with pytest.raises(AidmpError, match="central-eval=false"):
        RunConfig.from_flower({"he": True, "he-keys": "k"})


def test_the_app_bundle_aidmp_run_submits_is_this_projects_app_without_code(tmp_path):
    """`aidmp run` submits a pyproject.toml only: the same components and run-config
    defaults as this project's, and no module for a site to import."""
    from aidmp.server.app_bundle import write_app_bundle

    folder = write_app_bundle(tmp_path)
    assert [p.name for p in folder.iterdir()] == ["pyproject.toml"]
    bundle = tomllib.loads((folder / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    ours = tomllib.loads(PYPROJECT.read_text())
    assert bundle["components"] == ours["tool"]["flwr"]["app"]["components"]
    assert bundle["config"] == ours["tool"]["flwr"]["app"]["config"]
