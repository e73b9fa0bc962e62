"""Field checks shared by the config dataclasses: every number finite, and named ranges.

    errors = number_errors(cfg, positive=("lr",), at_least_one=("steps",), unit=("tau",))

Returns a list of messages (empty if all is well), so a config's ``__post_init__`` reports
every bad field at once in one ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any


def _numbers(obj: Any):
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, bool) or dataclasses.is_dataclass(v):
            continue
        if isinstance(v, (int, float)):
            yield f.name, v
        elif isinstance(v, (tuple, list)) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v
        ):
            for i, x in enumerate(v):
                yield f"{f.name}[{i}]", x


def number_errors(
    obj: Any,
    allow_neg_inf: Iterable[str] = (),
    positive: Iterable[str] = (),
    non_negative: Iterable[str] = (),
    at_least_one: Iterable[str] = (),
    unit: Iterable[str] = (),
) -> list[str]:
    """Messages for numbers that are NaN or infinite (except -inf where allowed), and for
    fields outside their range: positive (> 0), non_negative (>= 0), at_least_one (>= 1),
    unit ([0, 1])."""
    errors = []
    allow = set(allow_neg_inf)
    for name, v in _numbers(obj):
        if isinstance(v, float) and not math.isfinite(v):
            if not (v == float("-inf") and name in allow):
                errors.append(f"{name} must be a finite number (got {v})")
    values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    checks = [
        (positive, lambda v: v > 0, "> 0"),
        (non_negative, lambda v: v >= 0, ">= 0"),
        (at_least_one, lambda v: v >= 1, ">= 1"),
        (unit, lambda v: 0 <= v <= 1, "in [0, 1]"),
    ]
    for names, ok, text in checks:
        for name in names:
            v = values[name]
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            if not ok(v):
                errors.append(f"{name} must be {text} (got {v})")
    return errors
