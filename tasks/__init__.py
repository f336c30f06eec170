"""Task registry: name -> Task (tasks/<module>.py)."""

from tasks import docstring, greater_than, ioi, sva
from tasks.base import Task, TaskData

TASKS: dict[str, Task] = {t.name: t for t in (ioi.TASK, sva.TASK, docstring.TASK, greater_than.TASK)}

__all__ = ["TASKS", "Task", "TaskData"]
