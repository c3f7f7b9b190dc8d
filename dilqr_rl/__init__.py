"""dilqr-rl: differentiable iLQR (DiLQR) as a PyTorch layer.

Notation, used everywhere (batch-major): ``B`` batch, ``T`` horizon, ``n`` state size, ``m``
control size; ``x0 (B, n)``, states ``x (B, T+1, n)``, controls ``u (B, T, m)``, dynamics
parameters ``theta (p,)`` or per sample ``(B, p)``.

The core imports only torch and numpy; ``dilqr_rl.envs`` (Gymnasium) and ``dilqr_rl.sb3``
(Stable-Baselines3) are imported where used.
"""

from . import models, tasks  # noqa: E402  (tasks build on the layer)
from .cost import Cost, FunctionCost, QuadraticCost
from .grad import fixed_point_vjp
from .ilqr import ILQRConfig, Solution, ilqr_solve, rollout
from .layer import DiLQR, NonFiniteError, NotConvergedError, UnconvergedWarning
from .lqr import lqr_backward, lqr_rollout, lqr_solve
from .models import CartPole, Dynamics, Pendulum, Rocket

__all__ = [
    "CartPole", "Cost", "DiLQR", "Dynamics", "FunctionCost", "ILQRConfig", "NonFiniteError",
    "NotConvergedError",
    "Pendulum", "QuadraticCost", "Rocket", "Solution", "fixed_point_vjp",
    "ilqr_solve", "lqr_backward", "lqr_rollout", "lqr_solve", "models", "rollout", "tasks",
    "UnconvergedWarning",
]
__version__ = "0.1.0"


def _register_envs() -> None:
    """Register the ``dilqr_rl/`` Gymnasium ids when Gymnasium is installed (entry points are
    strings, so no env module and no ``mujoco`` is imported here)."""
    import importlib.util

    if importlib.util.find_spec("gymnasium") is not None:
        from . import envs  # noqa: F401  (registers on import)


_register_envs()
