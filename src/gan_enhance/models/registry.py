"""One way to build a network: by registry name with keyword arguments from params or a model card.

The architecture modules register themselves when the `gan_enhance.models` package is imported (its
__init__ imports each), which importing this module always does first."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

Kind = Literal["generator", "discriminator"]
CONTEXT = ("scale", "in_channels", "out_channels", "image_size")  # set by the task, not by model.* params


@dataclass(frozen=True)
class ArchEntry:
    builder: Callable[..., nn.Module]
    tasks: frozenset[str] = field(default_factory=frozenset)  # empty: fits every task


_REGISTRY: dict[Kind, dict[str, ArchEntry]] = {"generator": {}, "discriminator": {}}


def register(kind: Kind, name: str, tasks: tuple[str, ...] = ()) -> Callable:
    """Class decorator that makes a network buildable as `build(kind, name, **kwargs)`."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY[kind]:
            raise ValueError(f"{kind} '{name}' is registered twice")
        _REGISTRY[kind][name] = ArchEntry(builder, frozenset(tasks))
        return builder

    return decorate


def names(kind: Kind, task: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY[kind].items() if task is None or not e.tasks or task in e.tasks)


def check_arch(kind: Kind, name: str, kwargs: dict[str, Any], task: str | None = None) -> None:
    """Raise ValueError naming the problem when `name` or one of `kwargs` would not build."""
    entry = _REGISTRY[kind].get(name)
    if entry is None:
        raise ValueError(f"unknown {kind} '{name}'; choose one of: {', '.join(names(kind))}")
    if task is not None and entry.tasks and task not in entry.tasks:
        raise ValueError(f"{kind} '{name}' does not fit task '{task}'; choose one of: {', '.join(names(kind, task))}")
    signature = inspect.signature(entry.builder)
    allowed = [p for p in signature.parameters if p not in ("self", *CONTEXT)]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{kind} '{name}' has no option {', '.join(unknown)}; its options are: {', '.join(allowed)}")


def build(kind: Kind, name: str, **kwargs: Any) -> nn.Module:
    """Build a registered network. Extra context (scale, channels) is passed only where accepted."""
    if name not in _REGISTRY[kind]:
        raise ValueError(f"unknown {kind} '{name}'; choose one of: {', '.join(names(kind))}")
    builder = _REGISTRY[kind][name].builder
    accepted = inspect.signature(builder).parameters
    return builder(**{k: v for k, v in kwargs.items() if k in accepted})
