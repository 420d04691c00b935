"""Helpers shared by command modules: JSON output and option parsing."""

from __future__ import annotations

import json
import sys
from typing import Any

from ..errors import ConfigError


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def parse_int_list(value: str | None, option: str) -> list[int] | None:
    if value is None:
        return None
    try:
        items = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated integers, got '{value}'", where=option,
                          fix=f"Example: {option} 1,8,32") from None
    if not items:
        raise ConfigError("empty list", where=option, fix=f"Example: {option} 1,8,32")
    return items


def fmt_metric(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
