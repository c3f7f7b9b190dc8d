"""Imitation on the rocket: the dx and cost learners run on a tiny budget and reduce their
imitation loss (benchmarks/rocket_imitation.py measures what they recover). Slow: the expert
data (4 plans solved to 1e-10) and 6 training steps take ~20 s on one core."""

import pytest
import torch

from agents.data import make_expert_data
from agents.imitation_args import Args
from agents.training import train
from dilqr_rl import tasks


@pytest.fixture(scope="module")
def data():
    return make_expert_data("rocket", 2, 1, 1, seed=0, u_bound=100.0)


def _run(mode, data, epochs=3):
    args = Args(env="rocket", learner=f"dilqr.{mode}", n_train=2, n_val=1, n_test=1,
                epochs=epochs, lr=0.1, u_bound=100.0, eval_every=1, progress=False)
    rec = train(args, data)
    assert not rec["final"]["diverged"]
    return rec["history"]


@pytest.mark.slow
def test_dx_learner_reduces_imitation_loss_and_moves_toward_the_model(data):
    task = tasks.get("rocket")
    h = _run("dx", data)
    # train_im of epoch k is the loss of the plans made before its step
    assert h[-1]["train_im"] < 0.7 * h[0]["train_im"], [e["train_im"] for e in h]
    assert h[-1]["val_im"] < h[0]["val_im"]
    truth = float(task.combinations(task.theta())["m"])
    start = task.learn_init["m"]
    assert abs(h[-1]["identifiable"]["m"] - truth) < abs(start - truth)


@pytest.mark.slow
def test_cost_learner_reduces_imitation_loss_learning_the_weights(data):
    h = _run("cost", data)
    # RMSprop moves each logit by about lr = 0.1 a step: a few percent of the loss per step
    losses = [e["train_im"] for e in h]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.97 * losses[0], losses
    assert h[-1]["val_im"] < h[0]["val_im"]
    # the rocket learns its weights only (Task.cost_learn): the goal stays at the guess
    init = tasks.get("rocket").cost_learn_init
    p = torch.tensor(h[-1]["params"], dtype=torch.float64)
    assert (p[:16] - torch.tensor(init.weights, dtype=torch.float64)).abs().max() > 1e-2
    torch.testing.assert_close(p[16:], torch.tensor(init.goal, dtype=torch.float64))
