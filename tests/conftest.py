"""Shared test set-up."""

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def flower_task_identity():
    """Flower's runtimes set the task identity before any Message is built; unit tests
    that build Messages directly must do the same."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`--dist loadgroup`): the tests that start a real engine (Ray,
    `flwr run`, SuperLink and SuperNode processes) run on one worker, one at a time, so
    that two Ray clusters or federations never compete for this machine's cores and
    ports; every other module runs whole on one worker, so its fixtures are built once."""
    for item in items:
        group = "real-engines" if item.get_closest_marker("slow") else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
