"""Why the RL loss alone does not fix a wrong model: the signal that PPO's gradient carries to the
DiLQR actor's physical parameters, measured at the RL benchmark's wrong model of ``--env``
(``benchmarks/rl_methods.py``: every parameter 40 % off).

Three measurements at that ``theta_0`` (pendulum: ``(g, m, l) = (14, 1.4, 0.6)``, truth
``(10, 1, 1)``):

1. **The landscape.** ``J(theta)``, the deterministic closed-loop return of MPC with model
   ``theta`` on ``--starts`` fixed starts, along the segment ``theta_0 -> theta*``: what the
   parameters would gain by moving toward the truth.
2. **The true gradient.** ``dJ/dtheta`` at ``theta_0`` by central differences of ``J``.
3. **PPO's estimate.** ``--rollouts`` independent rollouts of ``--n-steps`` env steps with the
   DiLQR actor's Gaussian policy (std ``exp(log_std)`` in the action box, PPO's initial one),
   and for each the policy-gradient estimate ``g = mean_t grad_theta log pi(a_t | s_t) A_t``
   (discounted returns-to-go with PPO's ``gamma``, normalized: the advantage PPO would use with
   a perfect baseline of the batch mean), through the layer's implicit gradient. Reported: its
   mean and std over rollouts, the signal-to-noise ratio per parameter, its cosine with
   ``dJ/dtheta`` per rollout, and the fraction of first controls on their bound (those carry no
   gradient to the model: the implicit gradient of a held control is zero).

Writes ``benchmarks/results/rl_gradient_signal.{json,png}`` (pendulum) or
``rl_gradient_signal_<env>.{json,png}``; one torch thread.

Usage::

    python benchmarks/rl_gradient_signal.py               # ~3 min on one core
    python benchmarks/rl_gradient_signal.py --rollouts 16 --starts 16
    python benchmarks/rl_gradient_signal.py --env dilqr_rl/CartPole-v0 --starts 4 --alphas 6
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PENDULUM = "dilqr_rl/Pendulum-v0"


def closed_loop_return(params: dict[str, float], opt: argparse.Namespace) -> float:
    """Mean deterministic return of MPC with model ``params`` on the fixed starts."""
    import gymnasium as gym

    from dilqr_rl import tasks
    from dilqr_rl.agents.mpc import MPCPolicy, mpc_episodes

    envs = [gym.make(opt.env) for _ in range(opt.starts)]
    policy = MPCPolicy(tasks.for_env(opt.env), None, params, opt.max_iter)
    return float(np.mean(mpc_episodes(envs, policy, 10_000)))


def rollout_gradient(seed: int, wrong: dict[str, float], opt: argparse.Namespace
                     ) -> dict[str, Any]:
    """One rollout of the Gaussian DiLQR policy with model ``wrong`` and its policy-gradient
    estimate."""
    import gymnasium as gym

    from dilqr_rl import sb3

    env = gym.make(opt.env)
    spec = sb3.controller_spec(opt.env, wrong, max_iter=opt.max_iter)
    actor = sb3.DiLQRActor(spec, env.action_space, plan_cache=0)
    actor.eval()
    std = float(np.exp(opt.log_std))
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    O, A, R, D = [], [], [], []
    with torch.no_grad():
        for _ in range(opt.n_steps):
            mu = actor(torch.as_tensor(obs[None], dtype=torch.float32))[0].numpy()
            a = mu + std * rng.standard_normal(mu.shape)
            O.append(obs)
            A.append(a)
            obs, r, term, trunc, _ = env.step(np.clip(a, env.action_space.low,
                                                      env.action_space.high))
            R.append(r)
            D.append(term or trunc)
            if term or trunc:
                obs, _ = env.reset()
    G, g = np.zeros(len(R)), 0.0
    for t in reversed(range(len(R))):  # discounted returns-to-go, cut at episode ends
        g = R[t] + opt.gamma * g * (not D[t])
        G[t] = g
    adv = torch.as_tensor((G - G.mean()) / (G.std() + 1e-8))
    actor.train()
    params = list(actor.physical_parameters())
    sol = actor.solve(torch.as_tensor(np.array(O), dtype=torch.float32))
    mu = actor.to_action(sol.u[:, 0])
    a = torch.as_tensor(np.array(A), dtype=mu.dtype)
    logp = -((a - mu) ** 2).sum(-1) / (2 * std**2)
    grads = torch.autograd.grad((logp * adv.to(mu.dtype)).mean(), params)
    return {"grad": [float(x) for x in grads], "saturated": float((~sol.free[:, 0]).float()
                                                                   .mean()),
            "return_per_step": float(np.mean(R))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default=PENDULUM)
    p.add_argument("--rollouts", type=int, default=8)
    p.add_argument("--n-steps", type=int, default=512, help="env steps per rollout (PPO's)")
    p.add_argument("--starts", type=int, default=8, help="fixed starts of J(theta)")
    p.add_argument("--alphas", type=int, default=11, help="points on theta_0 -> theta*")
    p.add_argument("--fd-step", type=float, default=0.02, help="relative FD step of dJ/dtheta")
    p.add_argument("--log-std", type=float, default=-1.0)
    p.add_argument("--gamma", type=float, default=0.9)
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--out", default=None, help="default benchmarks/results/rl_gradient_signal"
                   " (pendulum) or rl_gradient_signal_<env>")
    opt = p.parse_args(argv)
    if opt.out is None:
        tail = "" if opt.env == PENDULUM else "_" + opt.env.split("/")[-1]
        opt.out = os.path.join(HERE, "results", "rl_gradient_signal" + tail)
    return opt


def main(argv: list[str] | None = None) -> int:
    torch.set_num_threads(1)
    from rl_methods import wrong_params

    import dilqr_rl.envs  # noqa: F401  (registers the ids)
    from dilqr_rl import tasks

    opt = parse_args(argv)
    t0 = time.perf_counter()
    truth = dict(tasks.for_env(opt.env).params)
    WRONG = wrong_params(opt.env)
    names = list(WRONG)
    th0, th1 = np.array([WRONG[k] for k in names]), np.array([truth[k] for k in names])
    alphas = np.linspace(0.0, 1.0, opt.alphas)
    landscape = [closed_loop_return(dict(zip(names, th0 + a * (th1 - th0), strict=True)), opt)
                 for a in alphas]
    fd = []
    for i, k in enumerate(names):
        h = opt.fd_step * th0[i]
        up, dn = dict(WRONG), dict(WRONG)
        up[k], dn[k] = th0[i] + h, th0[i] - h
        fd.append((closed_loop_return(up, opt) - closed_loop_return(dn, opt)) / (2 * h))
    fd = np.array(fd)
    rolls = [rollout_gradient(1000 + r, WRONG, opt) for r in range(opt.rollouts)]
    G = np.array([r["grad"] for r in rolls])
    cos = [float(g @ fd / (np.linalg.norm(g) * np.linalg.norm(fd) + 1e-300)) for g in G]
    report = {
        "env": opt.env, "wrong": WRONG, "truth": truth, "threads": 1,
        "opt": {**vars(opt), "out": os.path.relpath(opt.out)},  # no machine paths
        "alphas": alphas.tolist(), "landscape": landscape,
        "dJ_dtheta_fd": dict(zip(names, fd.tolist(), strict=True)),
        "toward_truth_cos": float(fd @ (th1 - th0) / (np.linalg.norm(fd)
                                                        * np.linalg.norm(th1 - th0))),
        "pg_mean": dict(zip(names, G.mean(0).tolist(), strict=True)),
        "pg_std": dict(zip(names, G.std(0).tolist(), strict=True)),
        "pg_snr": dict(zip(names, (np.abs(G.mean(0)) / (G.std(0) / np.sqrt(len(G)))).tolist(),
                           strict=True)),
        "pg_cos_with_dJ": cos, "pg_cos_positive_fraction": float(np.mean(np.array(cos) > 0)),
        "pg_mean_cos_with_dJ": float(G.mean(0) @ fd / (np.linalg.norm(G.mean(0))
                                                       * np.linalg.norm(fd))),
        "saturated_first_controls": float(np.mean([r["saturated"] for r in rolls])),
        "rollouts": rolls}
    report["wall_s"] = time.perf_counter() - t0
    os.makedirs(os.path.dirname(opt.out), exist_ok=True)
    with open(opt.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    plot(report, opt.out + ".png")
    print(json.dumps({k: v for k, v in report.items() if k not in ("rollouts", "opt")},
                     indent=1))
    return 0


def plot(report: dict[str, Any], path: str) -> None:
    """Left: J along theta_0 -> theta*; right: each rollout's gradient estimate against the
    finite-difference gradient, per parameter (normalized)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.plot(report["alphas"], report["landscape"], "o-")
    a1.set_xlabel("alpha: model = theta_0 + alpha (theta* - theta_0)")
    a1.set_ylabel("closed-loop return J")
    a1.set_title("MPC return along the way to the true model")
    a1.grid(alpha=0.3)
    names = list(report["dJ_dtheta_fd"])
    fd = np.array(list(report["dJ_dtheta_fd"].values()))
    G = np.array([r["grad"] for r in report["rollouts"]])
    x = np.arange(len(names))
    a2.bar(x - 0.2, fd / np.linalg.norm(fd), 0.4,
           label=f"dJ/dtheta (finite differences; norm {np.linalg.norm(fd):.3g})")
    Gn = G / np.linalg.norm(G, axis=1, keepdims=True)
    a2.errorbar(x + 0.2, Gn.mean(0), Gn.std(0), fmt="o", color="C1",
                label="PPO's estimate per rollout (mean +- std)")
    a2.set_xticks(x, names)
    a2.set_ylabel("normalized component")
    a2.axhline(0, color="k", lw=0.8)
    a2.set_title(f"gradient direction; mean cos {np.mean(report['pg_cos_with_dJ']):.2f}")
    a2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
