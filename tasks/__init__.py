"""Task registry: name -> Task (tasks/<module>.py, and tasks from files: tasks/files.py). TASK_NAMES needs no
import of the task modules (torch, pandas), so the CLI checks --tasks at once; TASKS imports them on first use."""

TASK_NAMES = ("ioi", "sva", "docstring", "greater-than")


def __getattr__(name: str):
    if name in ("TASKS", "Task", "TaskData"):
        from tasks import base, docstring, greater_than, ioi, sva

        registry = {t.name: t for t in (ioi.TASK, sva.TASK, docstring.TASK, greater_than.TASK)}
        assert tuple(registry) == TASK_NAMES, "TASK_NAMES must list the task modules' names in order"
        from tasks import file_task, files

        registry |= {name: file_task.task_of(name) for name in files.SOURCES}  # tasks from files named so far
        globals().update(TASKS=registry, Task=base.Task, TaskData=base.TaskData)
        return globals()[name]
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")


__all__ = ["TASKS", "TASK_NAMES", "Task", "TaskData"]
