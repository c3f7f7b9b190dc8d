"""The inexact QP subproblem (dilqr_rl.qp.solve_qp's ``loose`` samples): where the last step on
the true dynamics was not a full one, the subproblem stops once its inner steps gain little,
instead of creeping for tens of inner iterations; where the model is the problem (a
box-constrained LQ problem, tests/test_solver_reference.py) it is still solved to the end."""

from __future__ import annotations

import pytest
import torch

import dilqr_rl.qp as qp
from dilqr_rl import ILQRConfig, tasks


# (10 iterations do not converge from there, with either subproblem: expected)
@pytest.mark.filterwarnings("ignore::dilqr_rl.UnconvergedWarning")
@torch.no_grad()
def test_a_misleading_model_gets_an_inexact_subproblem(monkeypatch) -> None:
    # a state an SB3 run's replay buffer held (cart 50 m out, pole spinning), a model the RL
    # loss had drifted to, and the plan of the initial wrong model as the warm start (the
    # actor's plan cache): the m = 1 Newton step fails, every iteration goes to the QP
    task = tasks.for_env("dilqr_rl/CartPole-v0")
    x0 = torch.tensor([[50.0, 9.4, 0.2367, 0.9716, -30.7]], dtype=torch.float64)
    x0[:, 2:4] /= x0[:, 2:4].norm(dim=-1, keepdim=True)
    start = task.controller(model_params={"g": 13.72, "m_cart": 1.4, "m_pole": 0.06, "l": 0.3},
                            config=ILQRConfig(max_iter=10))
    u_init = start(x0).u
    ctl = task.controller(model_params={"g": 13.7, "m_cart": 1.0, "m_pole": 0.045, "l": 0.128},
                          config=ILQRConfig(max_iter=10))
    loose = ctl(x0, u_init=u_init)
    monkeypatch.setattr(qp, "QP_RTOL", 0.0)  # every subproblem solved to the end
    exact = ctl(x0, u_init=u_init)
    print(f"\ninner iterations: exact {int(exact.qp_iterations)}, inexact "
          f"{int(loose.qp_iterations)}; cost {float(exact.cost):.10g} / {float(loose.cost):.10g}")
    assert int(exact.qp_iterations) >= 100  # the creep this guards against
    assert int(loose.qp_iterations) <= int(exact.qp_iterations) // 2
    # the same outer progress: no worse a cost after the same 10 iterations
    assert float(loose.cost) <= float(exact.cost) * (1 + 1e-9)
