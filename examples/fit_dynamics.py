"""Learn a physical parameter through the controller: gradient descent on the pendulum's mass
so that DiLQR's plans match plans made with the true mass (the core of the imitation issue, in
20 lines). Prints the mass per step.

    python examples/fit_dynamics.py            # a few seconds
"""

from __future__ import annotations

import argparse
import math

import torch

import dilqr_rl as dl


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--init-mass", type=float, default=2.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    task = dl.tasks.get("pendulum")  # the swing-up: true model, task cost, bounds
    th = torch.linspace(-2.5, 2.5, 16, dtype=torch.float64)
    x0 = torch.stack([th.cos(), th.sin(), torch.zeros_like(th)], -1)
    cfg = dl.ILQRConfig(max_iter=200, tol=1e-9)
    with torch.no_grad():  # "expert" plans with the true mass
        u_expert = task.controller(config=cfg)(x0).u
    ctrl = task.controller(config=cfg, model_params={"m": args.init_mass})
    model = ctrl.dynamics
    # learn log m (stays positive); only the mass is trained
    log_m = torch.tensor(math.log(args.init_mass), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([log_m], lr=0.1)
    warm = None
    for step in range(args.steps):
        theta = torch.stack([model.g.detach(), log_m.exp(), model.l.detach()])
        sol = ctrl(x0, params=theta, u_init=warm)
        loss = (sol.u - u_expert).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        warm = sol.u.detach()
        print(f"step {step:2d}  imitation loss {loss.item():.3e}  mass {log_m.exp().item():.4f}")
    return log_m.exp().item()


if __name__ == "__main__":
    main()
