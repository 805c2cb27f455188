"""Names given as one comma-separated string (CLI options, config values) or as a sequence."""

from __future__ import annotations

from typing import Any

__all__ = ["comma_list"]


def comma_list(value: Any) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``; a sequence gives its items as strings; None gives ()."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    return tuple(str(v) for v in value)
