"""Task families: preprocessing, postprocessing and metrics, with no torch dependency.

Each task module exposes a `Task` subclass; `get_task(name)` returns an instance.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Task, TaskSettings
from .classification import TextClassification
from .qa import QuestionAnswering
from .token import TokenClassification

TASKS: dict[str, type[Task]] = {
    "text-classification": TextClassification,
    "token-classification": TokenClassification,
    "question-answering": QuestionAnswering,
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]()
    except KeyError:
        raise ConfigError(f"unknown task '{name}'", where="task",
                          fix=f"Choose one of: {', '.join(TASKS)}") from None


__all__ = ["TASKS", "Task", "TaskSettings", "get_task"]
