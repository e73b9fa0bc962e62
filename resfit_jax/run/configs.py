"""Overrides and printing for the frozen config dataclasses (TrainConfig, RobotTrainConfig).

    cfg = apply_overrides(preset("PickPlace", "cpu"), ["replay.utd=8", "learner.actor_lr=1e-5"])
    print(config_lines(cfg))                     # one field per line

Scripts take overrides as ``--config.replay.utd=8`` (``config_flag_parser`` pulls them out
of argv before absl parses it). ml_collections' config_flags
is not used: it assigns fields with setattr, which frozen dataclasses refuse and which skips
their validation, it reports an unknown field as a raw KeyError, and the preset an override
applies to depends on the --task flag, known only after parsing.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

CONFIG_PREFIX = "--config."


def _convert(text: str, current: Any) -> Any:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    if isinstance(current, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise ValueError(f"expected true/false, got {text!r}")
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(current, tuple) and isinstance(value, (list, tuple, int)):
        value = tuple(value) if not isinstance(value, int) else (value,)
    elif current is not None and not isinstance(value, type(current)):
        raise ValueError(f"expected {type(current).__name__}, got {text!r}")
    if isinstance(value, float) and value != value:
        raise ValueError("NaN is not a valid setting")
    return value


def apply_overrides(cfg, overrides: Sequence[str] | None):
    """Apply ``field=value`` / ``sub.field=value`` strings to a (nested) frozen dataclass.

    Values are Python literals converted to the field's current type (``replay.utd=8``,
    ``learner.critic_hidden_dims=512,512``, ``learner.target_noise=false``). Unknown fields
    raise an error listing the valid ones. All overrides are applied together, so settings
    that must change jointly are validated once, in their final combination.
    """
    changes: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"Override {item!r}: expected field=value.")
        path, text = item.split("=", 1)
        path = path.strip()
        obj, node, names = cfg, changes, path.split(".")
        for depth, name in enumerate(names):
            fields = {f.name: f for f in dataclasses.fields(obj)}
            if name not in fields:
                raise ValueError(
                    f"Override {item!r}: {type(obj).__name__} has no field "
                    f"{name!r}; fields: {sorted(fields)}."
                )
            obj = getattr(obj, name)
            if depth < len(names) - 1:
                if not dataclasses.is_dataclass(obj):
                    raise ValueError(f"Override {item!r}: {name!r} has no sub-fields.")
                node = node.setdefault(name, {})
                continue
            if dataclasses.is_dataclass(obj):
                raise ValueError(
                    f"Override {item!r}: {name!r} is a group of settings; set its "
                    f"fields ({name}.<field>=value)."
                )
            optional = "None" in str(fields[name].type)
            try:
                node[name] = (
                    None if optional and text.strip() == "None" else _convert(text.strip(), obj)
                )
            except ValueError as e:
                raise ValueError(f"Override {item!r}: {e}.") from None

    def build(obj, node):
        return dataclasses.replace(
            obj,
            **{k: build(getattr(obj, k), v) if isinstance(v, dict) else v for k, v in node.items()},
        )

    return build(cfg, changes) if changes else cfg


def to_dict(cfg) -> dict:
    """A config as plain JSON types (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def same_config(saved: dict, cfg, ignore: tuple[str, ...] = ()) -> bool:
    """Whether a config saved with ``to_dict`` (e.g. by a run started with an older version)
    is ``cfg``: fields the saved dict lacks must hold their class default in ``cfg``
    (options added since keep old runs resumable only while they are off). Top-level fields
    in ``ignore`` (e.g. device placement) are not compared."""
    return not config_differences(saved, cfg, ignore)


def config_differences(saved: dict, cfg, ignore: tuple[str, ...] = ()) -> list[str]:
    """``same_config``'s comparison, as the differing fields: "field.path: saved -> now"."""
    current = to_dict(cfg)
    out: list[str] = []

    def walk(s: dict, c: dict, obj, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            v, name = getattr(obj, f.name), prefix + f.name
            if obj is cfg and f.name in ignore:
                continue
            if f.name not in s:
                if f.default is not dataclasses.MISSING:
                    default = f.default
                elif f.default_factory is not dataclasses.MISSING:
                    default = f.default_factory()
                else:
                    out.append(f"{name}: missing -> {c[f.name]!r}")
                    continue
                if json.loads(json.dumps(default, default=_as_json)) != c[f.name]:
                    out.append(f"{name}: (not recorded) -> {c[f.name]!r}")
            elif dataclasses.is_dataclass(v) and isinstance(s[f.name], dict):
                walk(s[f.name], c[f.name], v, name + ".")
            elif s[f.name] != c[f.name]:
                out.append(f"{name}: {s[f.name]!r} -> {c[f.name]!r}")
        for extra in sorted(set(s) - set(ignore if obj is cfg else ()) - set(c)):
            out.append(f"{prefix}{extra}: {s[extra]!r} -> (no such field now)")

    walk(saved, current, cfg, "")
    return out


def _as_json(x):
    return dataclasses.asdict(x) if dataclasses.is_dataclass(x) else str(x)


def config_lines(cfg, prefix: str = "") -> str:
    """One ``path = value`` line per field, nested configs flattened with dots."""
    lines = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            lines.append(config_lines(v, f"{prefix}{f.name}."))
        else:
            lines.append(f"  {prefix}{f.name} = {v!r}")
    return "\n".join(lines)


# the --config.<field>=value flags, taken out of argv before absl parses it
_CONFIG_ARGS: list[str] = []


def config_flag_parser(argv: list[str]) -> list[str]:
    """An ``app.run(main, flags_parser=...)`` parser: ``--config.a.b=v`` (or
    ``--config.a.b v``) arguments are kept for ``config_overrides()``; the rest go to absl."""
    from absl import flags

    rest, i = [], 0
    _CONFIG_ARGS.clear()
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(CONFIG_PREFIX):
            item = arg[len(CONFIG_PREFIX) :]
            if "=" not in item:
                if i + 1 >= len(argv):
                    raise SystemExit(
                        f"FATAL Flags parsing error: {arg} needs a value (--config.field=value)."
                    )
                item, i = f"{item}={argv[i + 1]}", i + 1
            _CONFIG_ARGS.append(item)
        else:
            rest.append(arg)
        i += 1
    try:
        return flags.FLAGS(rest)
    except flags.Error as e:
        print(
            f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


def config_overrides(extra: Sequence[str] = ()) -> list[str]:
    """The ``--config.*`` overrides of this run, then ``extra``."""
    return list(_CONFIG_ARGS) + list(extra)


def usage_error(message: str) -> NoReturn:
    """End a script with a one-line error (exit status 2), no traceback and no flag dump."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def resolve(build: Callable[[], Any], extra: Sequence[str] = ()) -> Any:
    """``apply_overrides(build(), config_overrides(extra))``; a bad preset name, field or value
    ends the script with ``usage_error``."""
    try:
        return apply_overrides(build(), config_overrides(extra))
    except ValueError as e:
        usage_error(str(e))
