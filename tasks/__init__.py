"""Learning tasks, one module each. `get_task(name)` is the only way in.

`partition` splits a task's rows: between simulated institutions, and into a node's
own train and validation parts.

Importing this package is cheap: torch comes with `base` (and `Task`), on first use,
so the command line can check a task's name before loading torch. `data` holds the
rows (`Dataset`, `LocalData`) and loads no torch.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any

from aidmp.errors import AidmpError

if TYPE_CHECKING:
    from aidmp.tasks.base import Task
    from aidmp.tasks.data import Dataset

# name -> module; modules are imported lazily so a missing optional dataset
# package only matters for the task that needs it.
_TASK_MODULES = {
    "adult": "aidmp.tasks.adult",
    "breast-cancer": "aidmp.tasks.breast_cancer",
    "mnist": "aidmp.tasks.mnist",
}

TASK_NAMES = tuple(_TASK_MODULES)


def check_task_name(name: str) -> None:
    """An error that lists the tasks there are, unless `name` is one; loads nothing."""
    if name not in _TASK_MODULES:
        raise AidmpError(f"unknown task '{name}'; choose one of: {', '.join(TASK_NAMES)}")


def get_task(name: str) -> Task:
    """The task called `name`, or an error that lists the ones there are."""
    check_task_name(name)
    return importlib.import_module(_TASK_MODULES[name]).TASK


@functools.lru_cache(maxsize=4)
def load_dataset(name: str) -> Dataset:
    """Load and encode a task's data once per process."""
    return get_task(name).load()


def __getattr__(name: str) -> Any:
    if name == "Dataset":
        from aidmp.tasks.data import Dataset

        return Dataset
    if name == "Task":
        from aidmp.tasks.base import Task

        return Task
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TASK_NAMES", "Dataset", "Task", "check_task_name", "get_task", "load_dataset"]
