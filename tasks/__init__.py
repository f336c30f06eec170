"""Task registry: name -> Task (tasks/<module>.py, and tasks from files: tasks/files.py). TASK_NAMES needs no
import of the task modules (torch, pandas), so the CLI checks --tasks at once; TASKS imports them on first use
and always reflects the files registered so far (tasks.files.SOURCES), so nothing has to add to it."""

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from tasks.names import TASK_NAMES

if TYPE_CHECKING:  # loaded on first use by __getattr__ below
    from tasks.base import Task, TaskData

    TASKS: Mapping[str, Task]


class _Registry(Mapping):
    """The built-in tasks in TASK_NAMES order, then the task files named on this command line."""

    def __init__(self):
        from tasks import docstring, greater_than, ioi, sva

        self.builtin = {t.name: t for t in (ioi.TASK, sva.TASK, docstring.TASK, greater_than.TASK)}
        assert tuple(self.builtin) == TASK_NAMES, "TASK_NAMES must list the task modules' names in order"

    def __getitem__(self, name: str):
        from tasks import file_task, files

        if name in self.builtin:
            return self.builtin[name]
        if name in files.SOURCES:
            return file_task.task_of(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        from tasks import files

        return iter([*self.builtin, *files.SOURCES])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def __getattr__(name: str):
    if name in ("TASKS", "Task", "TaskData"):
        from tasks import base

        globals().update(TASKS=_Registry(), Task=base.Task, TaskData=base.TaskData)
        return globals()[name]
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")


__all__ = ["TASKS", "TASK_NAMES", "Task", "TaskData"]
