"""Config fields that check themselves: a dataclass field carries its rule, its flag and whether a
resumed run may change it, and :func:`check_fields` applies every rule once, in ``__post_init__``.

The configs of ``nets.train`` and ``nets.distill`` are built from these, so that the dataclass is
the one source of truth: the commands' flags are checked against its fields (a test proves every
field has a flag and every flag a field), a resumed run is ``Config(**saved)`` plus the fields
marked ``resumable``, and a bad value from Python or from a stranger's saved config is the same
:class:`ConfigError` naming the field.
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, field, fields
from typing import Any, Literal, get_args, get_origin


class ConfigError(ValueError):
    """A config value that does not fit its field's rule; ``field`` names the field."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.field = name
        self.reason = message


Rule = Callable[[Any], str | None]  # the problem with a value, or None when it fits


def setting(default: Any = MISSING, rule: Rule | None = None, *, resumable: bool = False,
            flag: bool = True, factory: Callable[[], Any] | None = None):
    """A config field with its ``rule``; ``resumable``: a resumed run may change it; ``flag``:
    the command has a flag for it (``--name-with-dashes``)."""
    meta = {"rule": rule, "resumable": resumable, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(low: int, high: int | None = None) -> Rule:
    """An int in [low, high]."""
    def rule(value):
        if not _is_int(value):
            return f"expected an integer, got {value!r}"
        if value < low or (high is not None and value > high):
            return f"must be >= {low}{'' if high is None else f' and <= {high}'}, got {value}"
        return None
    return rule


def number(low: float, high: float = math.inf, low_open: bool = True, high_open: bool = False) -> Rule:
    """A finite number in an interval (default (low, high])."""
    def rule(value):
        if not _is_number(value):
            return f"expected a finite number, got {value!r}"
        if (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
            return (f"must be in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}, "
                    f"got {value!r}")
        return None
    return rule


def text(value: Any) -> str | None:
    return None if isinstance(value, str) else f"expected a string, got {value!r}"


def _type_problem(hint: Any, value: Any) -> str | None:
    """What is wrong with ``value`` against a field's annotation (Literal choices, bool, Optional)."""
    args = get_args(hint)
    if get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        args = get_args(hint)
    if get_origin(hint) is Literal:
        return None if value in args else f"must be one of {', '.join(map(str, args))}; got {value!r}"
    if hint is bool and not isinstance(value, bool):
        return f"expected true or false, got {value!r}"
    return None


def check_fields(config: Any) -> None:
    """Every field of the dataclass ``config`` against its annotation and rule; the first
    problem is a ConfigError naming the field. None passes wherever the annotation allows it. A
    path given where a string is expected (a ``Path``, a returned run) is taken as its string."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, os.PathLike) and f.metadata.get("rule") is text:
            value = os.fspath(value)
            object.__setattr__(config, f.name, value)
        problem = _type_problem(hints[f.name], value)
        rule = f.metadata.get("rule")
        if problem is None and rule is not None and value is not None:
            problem = rule(value)
        if problem is not None:
            raise ConfigError(f.name, problem)


def choices(config_type: type, name: str) -> tuple:
    """The Literal choices of a field (for the command's ``choices=``)."""
    hint = typing.get_type_hints(config_type)[name]
    if get_origin(hint) is not Literal:
        hint = next(a for a in get_args(hint) if get_origin(a) is Literal)
    return get_args(hint)


def resumable_fields(config_type: type) -> frozenset[str]:
    """The fields a resumed run may change (to extend, move or re-host it)."""
    return frozenset(f.name for f in fields(config_type) if f.metadata.get("resumable"))


def flag_fields(config_type: type) -> frozenset[str]:
    """The fields the command sets by a flag of the same name."""
    return frozenset(f.name for f in fields(config_type) if f.metadata.get("flag", True))


def flag_of(name: str) -> str:
    """The command-line flag of a field: ``batch_size`` → ``--batch-size``."""
    return "--" + name.replace("_", "-")


def changes_on_resume(config_type: type, saved: Any, given: dict) -> tuple[dict, list[str]]:
    """(the overrides a resume applies, the fields it refuses): ``given`` values of resumable
    fields, and the names of the other given fields whose value differs from the saved run's."""
    movable = resumable_fields(config_type)
    overrides = {k: v for k, v in given.items() if k in movable}
    refused = sorted(k for k, v in given.items() if k not in movable and getattr(saved, k) != v)
    return overrides, refused
