"""Frozen dataclass configs and dotted command-line overrides (``--set model.n_layer=6``)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten_config(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: nested config fields by their dotted ``--set`` names."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(there: dict, now: dict, ignore: typing.Sequence[str] = (), *, predates_ok: bool = False,
                absent: str = "absent") -> dict[str, tuple[Any, Any]]:
    """``{field: (value there, value now)}`` for each field (dotted where nested, in name order) whose values
    differ, compared as JSON gives them back (a tuple is a list). ``ignore`` names fields (or whole nested
    ones) left out. A field one side lacks differs as ``absent``, unless ``predates_ok``: then it is left out
    (a record made before the field existed)."""
    a = flatten_config(json.loads(json.dumps(there, default=str)))
    b = flatten_config(json.loads(json.dumps(now, default=str)))
    keys = (a.keys() & b.keys()) if predates_ok else (a.keys() | b.keys())
    skip = set(ignore)
    return {k: (a.get(k, absent), b.get(k, absent)) for k in sorted(keys)
            if k not in skip and k.split(".")[0] not in skip and a.get(k, absent) != b.get(k, absent)}


def _coerce(value: str, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value.lower() in ("none", "null"):
            return None
        return _coerce(value, args[0], where)
    if typ is bool:
        low = value.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{where}: expected a boolean, got {value!r}")
    if typ in (int, float, str):
        try:
            return typ(value)
        except ValueError as err:
            raise ValueError(f"{where}: expected {typ.__name__}, got {value!r}") from err
    if origin in (tuple, list) or typ in (tuple, list):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = [v for v in value.strip("()[]").split(",") if v.strip()]
        if not isinstance(parsed, list):
            parsed = [parsed]
        inner = typing.get_args(typ)
        elem = inner[0] if inner else str
        coerced = [_coerce(str(v).strip(), elem, where) for v in parsed]
        return tuple(coerced) if (origin is tuple or typ is tuple) else coerced
    raise ValueError(f"{where}: cannot set a field of type {typ}")


def apply_overrides(cfg: Any, overrides: dict[str, str], prefix: str = "") -> Any:
    """Return a copy of frozen dataclass ``cfg`` with ``{"field": "value"}`` applied.

    Nested dataclasses take dotted names (``"optim.lr"``). An unknown field raises a
    ValueError that lists the valid ones.
    """
    if not dataclasses.is_dataclass(cfg):
        raise ValueError(f"{prefix or 'config'} is not a dataclass")
    hints = typing.get_type_hints(type(cfg))
    fields = {f.name for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    nested: dict[str, dict[str, str]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        where = f"{prefix}{head}"
        if head not in fields:
            raise ValueError(f"unknown config field {where!r}; valid fields: {sorted(fields)}")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            changes[head] = _coerce(str(value), hints[head], where)
    for head, sub in nested.items():
        changes[head] = apply_overrides(getattr(cfg, head), sub, prefix=f"{prefix}{head}.")
    return dataclasses.replace(cfg, **changes)
