"""Learn a physical parameter through the controller: fit the pendulum's mass so that DiLQR's
plans match plans made with the true mass, using the exact gradient of the converged plans.

Claim (printed, and checked by tests/test_examples.py): from a mass of 2.0 the fit recovers
the true mass to 1e-3 and drives the imitation loss below 1e-6 of its start, in a few
L-BFGS steps (each one a handful of batched solves and implicit backward passes).

    python examples/fit_dynamics.py            # a few seconds on 2 CPU cores
"""

from __future__ import annotations

import argparse
import math

import torch

import dilqr_rl as dl


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="L-BFGS steps")
    ap.add_argument("--init-mass", type=float, default=2.0, help="the model's starting mass")
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
    # learn log m (the mass stays positive); only the mass is trained. The loss is smooth in
    # log m and one-dimensional: L-BFGS with a line search does not overshoot as Adam does.
    log_m = torch.tensor(math.log(args.init_mass), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_m], lr=1.0, max_iter=4, line_search_fn="strong_wolfe")
    warm: list[torch.Tensor | None] = [None]  # each solve starts from the previous plans

    def closure() -> torch.Tensor:
        opt.zero_grad()
        theta = torch.stack([model.g.detach(), log_m.exp(), model.l.detach()])
        sol = ctrl(x0, params=theta, u_init=warm[0])
        loss = (sol.u - u_expert).square().mean()
        loss.backward()  # the implicit gradient at the converged plans
        warm[0] = sol.u.detach()
        return loss

    first = float(closure().detach())
    loss = first
    for step in range(args.steps):
        opt.step(closure)
        loss = float(closure().detach())  # the loss at the new mass
        print(f"step {step}  imitation loss {loss:.3e}  mass {float(log_m.detach().exp()):.6f}")
    mass, true = float(log_m.detach().exp()), task.params["m"]
    print(f"mass {args.init_mass:.3f} -> {mass:.6f} (true {true:g}); imitation loss "
          f"{first:.2e} -> {loss:.2e}")
    return {"mass": mass, "true": true, "loss_first": first, "loss_last": loss}


if __name__ == "__main__":
    main()
