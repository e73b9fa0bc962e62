"""Field checks shared by the config dataclasses: every field of its annotated type, every
number finite, and named ranges.

    errors = number_errors(cfg, positive=("lr",), at_least_one=("steps",), unit=("tau",))

Returns a list of messages (empty if all is well), so a config's ``__post_init__`` reports
every bad field at once in one ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np


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


_SCALARS = {
    "int": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))),
    "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))),
    "bool": (lambda v: isinstance(v, (bool, np.bool_))),
    "str": (lambda v: isinstance(v, str)),
}


def _type_ok(annotation: str, v: Any) -> bool | None:
    """Whether v fits a field annotation written as a string (``from __future__ import
    annotations``); None for annotations this does not check (dataclasses, Any, ...)."""
    parts = [p.strip() for p in annotation.split("|")]
    if "None" in parts:
        if v is None:
            return True
        parts.remove("None")
    if len(parts) != 1:
        return None
    t = parts[0]
    if t in _SCALARS:
        return _SCALARS[t](v)
    if t.startswith("tuple[") and t.endswith("]"):
        inner = [x.strip() for x in t[len("tuple[") : -1].split(",")]
        if not isinstance(v, (tuple, list)):
            return False
        if len(inner) == 2 and inner[1] == "...":
            return inner[0] not in _SCALARS or all(_SCALARS[inner[0]](x) for x in v)
        if all(x in _SCALARS for x in inner):
            return len(v) == len(inner) and all(_SCALARS[t](x) for t, x in zip(inner, v))
    return None


def type_errors(obj: Any) -> list[str]:
    """Messages for fields whose value does not have the annotated type (an int where an
    int is needed, never a float, bool or string; a pair where a pair is needed; ...)."""
    errors = []
    for f in dataclasses.fields(obj):
        if not isinstance(f.type, str):
            continue
        v = getattr(obj, f.name)
        if _type_ok(f.type, v) is False:
            errors.append(f"{f.name} must be {f.type} (got {v!r} of type {type(v).__name__})")
    return errors


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
    unit ([0, 1]). A field of the wrong type raises ValueError at once (its ranges cannot
    be checked), naming every such field."""
    wrong = type_errors(obj)
    if wrong:
        raise ValueError(f"{type(obj).__name__}: " + "; ".join(wrong) + ".")
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
