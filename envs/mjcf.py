"""MJCF strings of the three systems, built from their physical parameters.

Plain strings: nothing here imports ``mujoco``. The pendulum and cart-pole models are
physically the systems of :class:`dilqr_rl.Pendulum` and :class:`dilqr_rl.CartPole`:

- pendulum: a uniform rod of mass ``m`` and length ``l`` on a hinge at one end (inertia
  ``m l^2 / 3`` about the hinge, the ``3 g / (2 l)`` and ``3 / (m l^2)`` of the analytic
  model); hinge angle ``0`` = upright, positive towards ``+x``; torque motor on the hinge.
- cart-pole: a cart of mass ``m_cart`` on a frictionless rail along ``x``, a uniform pole of
  mass ``m_pole`` and **half**-length ``l`` (length ``2 l``, as in the classic Barto / Gym
  equations) on a hinge at the cart; force motor on the rail.

Inertias are given explicitly (``<inertial>``), so the visual geoms carry no mass. Contacts
are disabled. The rocket scene is for rendering only: a mocap body posed from the state.
"""

from __future__ import annotations

__all__ = ["cartpole_mjcf", "pendulum_mjcf", "rocket_mjcf"]


def _f(v: float) -> str:
    return f"{float(v):.17g}"


def _header(name: str, timestep: float, g: float, integrator: str, width: int,
            height: int) -> str:
    return f"""<mujoco model="{name}">
  <compiler angle="radian"/>
  <option timestep="{_f(timestep)}" gravity="0 0 {_f(-g)}" integrator="{integrator}">
    <flag contact="disable"/>
  </option>
  <visual>
    <global offwidth="{int(width)}" offheight="{int(height)}"/>
    <headlight ambient="0.4 0.4 0.4" diffuse="0.6 0.6 0.6"/>
  </visual>
  <asset>
    <texture name="grid" type="2d" builtin="checker" width="256" height="256"
             rgb1="0.85 0.87 0.9" rgb2="0.75 0.78 0.82"/>
    <material name="grid" texture="grid" texrepeat="8 8"/>
  </asset>
"""


def pendulum_mjcf(g: float, m: float, l: float, timestep: float, damping: float = 0.0,
                  integrator: str = "Euler", width: int = 480, height: int = 480) -> str:
    """The pendulum: hinge ``hinge`` (qpos = angle from upright), motor ``torque``."""
    i_c = m * l * l / 12.0  # uniform rod about its centre; + m (l/2)^2 = m l^2 / 3 at the hinge
    r = 0.04 * l
    return _header("dilqr_pendulum", timestep, g, integrator, width, height) + f"""  <worldbody>
    <light pos="0 -2 3" dir="0 0.5 -0.8"/>
    <geom name="floor" type="plane" pos="0 0 {_f(-1.3 * l)}" size="{_f(3 * l)} {_f(3 * l)} 0.1"
          material="grid" contype="0" conaffinity="0"/>
    <geom name="pivot" type="cylinder" fromto="0 -{_f(2 * r)} 0 0 {_f(2 * r)} 0"
          size="{_f(1.5 * r)}" rgba="0.3 0.3 0.3 1" mass="0" contype="0" conaffinity="0"/>
    <body name="pole">
      <joint name="hinge" type="hinge" axis="0 1 0" damping="{_f(damping)}"/>
      <inertial pos="0 0 {_f(l / 2)}" mass="{_f(m)}"
                diaginertia="{_f(i_c)} {_f(i_c)} {_f(1e-6 * i_c)}"/>
      <geom name="rod" type="capsule" fromto="0 0 0 0 0 {_f(l)}" size="{_f(r)}"
            rgba="0.8 0.3 0.2 1" mass="0" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <actuator>
    <motor name="torque" joint="hinge" gear="1"/>
  </actuator>
</mujoco>
"""


def cartpole_mjcf(g: float, m_cart: float, m_pole: float, l: float, timestep: float,
                  damping: float = 0.0, integrator: str = "Euler", width: int = 480,
                  height: int = 480) -> str:
    """The cart-pole: joints ``slider`` (cart position) and ``hinge`` (pole angle from
    upright), motor ``force`` on the slider; ``damping`` applies to both joints."""
    length = 2.0 * l
    i_c = m_pole * length * length / 12.0
    i_cart = m_cart * 0.01
    r = 0.02 * max(length, 0.5)
    return _header("dilqr_cartpole", timestep, g, integrator, width, height) + f"""  <worldbody>
    <light pos="0 -3 4" dir="0 0.6 -0.8"/>
    <geom name="floor" type="plane" pos="0 0 {_f(-length - 0.2)}" size="20 20 0.1"
          material="grid" contype="0" conaffinity="0"/>
    <geom name="rail" type="capsule" fromto="-20 0 0 20 0 0" size="0.015"
          rgba="0.3 0.3 0.3 1" mass="0" contype="0" conaffinity="0"/>
    <body name="cart">
      <joint name="slider" type="slide" axis="1 0 0" damping="{_f(damping)}"/>
      <inertial pos="0 0 0" mass="{_f(m_cart)}" diaginertia="{_f(i_cart)} {_f(i_cart)}
                {_f(i_cart)}"/>
      <geom name="cart" type="box" size="0.2 0.1 0.08" rgba="0.2 0.4 0.8 1" mass="0"
            contype="0" conaffinity="0"/>
      <body name="pole">
        <joint name="hinge" type="hinge" axis="0 1 0" damping="{_f(damping)}"/>
        <inertial pos="0 0 {_f(l)}" mass="{_f(m_pole)}"
                  diaginertia="{_f(i_c)} {_f(i_c)} {_f(1e-6 * i_c)}"/>
        <geom name="pole" type="capsule" fromto="0 -0.12 0 0 -0.12 {_f(length)}"
              size="{_f(r)}" rgba="0.8 0.3 0.2 1" mass="0" contype="0" conaffinity="0"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor name="force" joint="slider" gear="1"/>
  </actuator>
</mujoco>
"""


def rocket_mjcf(l: float, timestep: float, gravity: float, width: int = 480,
                height: int = 480) -> str:
    """The rocket scene (rendering only): a mocap body ``rocket`` whose local ``z`` axis is
    the rocket's long (body ``x``) axis, a ground plane and a landing pad at the origin.

    MuJoCo's world ``(X, Y, Z)`` is the model's inertial ``(y, z, x)`` (a cyclic relabelling,
    so a proper rotation): ``Z`` is up in both.
    """
    r = 0.12 * l
    return _header("dilqr_rocket", timestep, gravity, "Euler", width, height) + f"""  <worldbody>
    <light pos="0 0 20" dir="0 0 -1" directional="true"/>
    <geom name="ground" type="plane" size="30 30 0.1" material="grid"/>
    <geom name="pad" type="cylinder" size="1 0.01" pos="0 0 0.01" rgba="0.9 0.6 0.1 1"/>
    <body name="rocket" mocap="true">
      <geom name="hull" type="capsule" fromto="0 0 {_f(-l / 2)} 0 0 {_f(l / 2)}" size="{_f(r)}"
            rgba="0.85 0.85 0.9 1"/>
      <geom name="nose" type="sphere" pos="0 0 {_f(l / 2 + r)}" size="{_f(0.7 * r)}"
            rgba="0.8 0.2 0.2 1"/>
      <geom name="nozzle" type="cylinder" fromto="0 0 {_f(-l / 2 - 1.5 * r)} 0 0 {_f(-l / 2)}"
            size="{_f(0.8 * r)}" rgba="0.2 0.2 0.2 1"/>
    </body>
  </worldbody>
</mujoco>
"""
