"""Observations to controller states: the functions a policy or a saved model may name.

``obs_to_state`` (default: the observation is the state) is a callable or a name registered
with :func:`register_obs_to_state`; a saved model stores the name, and the function is looked
up in :data:`OBS_TO_STATE` when the model is loaded (register it first). A model file cannot
name a module to import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

__all__ = ["OBS_TO_STATE", "register_obs_to_state", "resolve_obs_to_state"]

#: ``obs_to_state`` functions by name (:func:`register_obs_to_state`): the only ones a policy
#: or a saved model can name
OBS_TO_STATE: dict[str, Callable[[Tensor], Tensor]] = {}


def register_obs_to_state(name: str, fn: Callable[[Tensor], Tensor]) -> None:
    """Allow ``obs_to_state=name``: policies (and models loaded with ``PPO.load`` & co.,
    which store the name) map observations to states with ``fn``, ``(B, obs_dim) -> (B, n)``.

    Register before loading a model saved with that name. Names are looked up here only; a
    model file cannot make the policy import a module. (A callable passed directly is
    pickled into the saved model by SB3; pass its registered name instead.)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"obs_to_state name must be a non-empty str, got {name!r}")
    if not callable(fn):
        raise ValueError(f"obs_to_state function for {name!r} must be callable, got {fn!r}")
    OBS_TO_STATE[name] = fn


def resolve_obs_to_state(v: Any) -> Callable[[Tensor], Tensor] | None:
    """``None``, a callable, or a registered name -> the callable (never imports)."""
    if v is None or callable(v):
        return v
    if isinstance(v, str):
        fn = OBS_TO_STATE.get(v)
        if fn is None:
            raise ValueError(
                f"obs_to_state {v!r} is not a registered name (registered: "
                f"{sorted(OBS_TO_STATE)}); call dilqr_rl.sb3.register_obs_to_state({v!r}, fn) "
                "first (also before loading a saved model), or pass the callable. Module paths "
                "are not imported: a model file must not choose code to run")
        return fn
    raise ValueError(f"obs_to_state must be None, a callable or a registered name, got {v!r}")
