"""Name -> reward function registry.

A reward function takes ``(completions: list[str], answers: list[str])`` and
returns one float per completion.  Built-ins are registered at import; users
add their own with ``register_reward`` (plain call or decorator).
"""

from __future__ import annotations

from typing import Callable

from rewards.accuracy import accuracy_reward, accuracy_strict_reward
from rewards.format import format_nothink_reward, format_reward, format_think_after_reward
from rewards.format_strict import format_strict_nothink_reward, format_strict_reward

RewardFn = Callable[[list, list], list]


class UnknownRewardError(KeyError, ValueError):
    """Unknown reward name.  A KeyError (it is a lookup) and a ValueError (it is bad config)."""

    def __str__(self) -> str:  # KeyError would print repr() of the message
        return str(self.args[0]) if self.args else ""


_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str, fn: RewardFn | None = None, *, overwrite: bool = False):
    """Register ``fn`` under ``name``.  Without ``fn``, returns a decorator.

    Re-registering an existing name raises ValueError unless ``overwrite=True``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"reward name must be a non-empty string, got {name!r}")

    def _register(f: RewardFn) -> RewardFn:
        if not callable(f):
            raise TypeError(f"reward {name!r} must be callable, got {type(f).__name__}")
        if name in _REGISTRY and not overwrite and _REGISTRY[name] is not f:
            raise ValueError(f"reward {name!r} is already registered; pass overwrite=True to replace it")
        _REGISTRY[name] = f
        return f

    return _register if fn is None else _register(fn)


def get_reward(name: str) -> RewardFn:
    """The reward function registered as ``name``; UnknownRewardError lists the known names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownRewardError(
            f"unknown reward {name!r}; available: {', '.join(available_rewards())}"
        ) from None


def available_rewards() -> list[str]:
    """Sorted list of registered reward names."""
    return sorted(_REGISTRY)


register_reward("format", format_reward)
register_reward("format_nothink", format_nothink_reward)
register_reward("format_think_after", format_think_after_reward)
register_reward("format_strict", format_strict_reward)
register_reward("format_strict_nothink", format_strict_nothink_reward)
register_reward("accuracy", accuracy_reward)
register_reward("accuracy_strict", accuracy_strict_reward)
