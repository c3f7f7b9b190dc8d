"""Discrete-time dynamics models ``x_{t+1} = f(x_t, u_t; theta)``: the base class and its
autodiff helpers (:mod:`.base`), and one file per built-in model."""

from .base import PARAM_FLOOR, Dynamics, hessian_rows, jacobian_rows, transition_loss
from .cartpole import CartPole
from .pendulum import Pendulum
from .rocket import Rocket, TimedRocket

__all__ = ["CartPole", "Dynamics", "PARAM_FLOOR", "Pendulum", "Rocket", "TimedRocket",
           "hessian_rows", "jacobian_rows", "transition_loss"]
