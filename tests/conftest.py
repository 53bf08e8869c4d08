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
    """Under pytest-xdist (`--dist loadgroup`): the tests that start a real engine run one
    at a time within two groups, the deployment (SuperLink and SuperNode processes, the
    longest test) and the rest (Ray, `flwr run`, the wheel, Chromium), so that two Ray
    clusters never compete, while the deployment runs beside the rest; every other module
    runs whole on one worker, so its fixtures are built once."""
    for item in items:
        if not item.get_closest_marker("slow"):
            group = item.module.__name__
        elif item.module.__name__.endswith("test_deployment"):
            group = "real-engines: SuperLink and SuperNode processes"  # minutes on its own
        else:
            group = "real-engines: Ray, flwr run, the wheel, Chromium"
        item.add_marker(pytest.mark.xdist_group(group))
