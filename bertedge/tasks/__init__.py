"""Task families: preprocessing, postprocessing and metrics, with no torch dependency.

Each task module exposes a `Task` subclass; `get_task(name)` returns an instance. What differs between the
tasks (their data files, example shapes, heads, outputs, KD losses, bundle interface) is asked of the Task
object: no other module branches on a task's name. `TASKS` is the one list of task names.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import SplitFile, Task, TaskSettings
from .classification import TextClassification
from .qa import QuestionAnswering
from .token import TokenClassification

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (TextClassification, TokenClassification, QuestionAnswering)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
# Every output name a task head produces (logits, start_logits, end_logits), each once.
OUTPUT_NAMES: tuple[str, ...] = tuple(dict.fromkeys(name for cls in TASKS.values() for name in cls.output_names))


def get_task(name: str) -> Task:
    try:
        return TASKS[name]()
    except KeyError:
        raise ConfigError(f"unknown task '{name}'", where="task",
                          fix=f"Choose one of: {', '.join(TASKS)}") from None


__all__ = ["OUTPUT_NAMES", "TASKS", "TASK_NAMES", "SplitFile", "Task", "TaskSettings", "get_task"]
