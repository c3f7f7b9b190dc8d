"""Control from pixels (paper section 5.4): the image wrapper, the models' gradients, the
command."""

import json
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import dilqr_rl as dl
from dilqr_rl.agents.visual import LatentAR, VisualDiLQR
from dilqr_rl.agents.visual_data import make_visual_data
from dilqr_rl.agents.visual_train import loss_terms, train_model
from dilqr_rl.envs import PixelObservation, render_pendulum
from dilqr_rl.envs.pixels import ROD_LENGTH


def _states(th, dth=0.0):
    th = torch.as_tensor(th, dtype=torch.float64)
    return torch.stack([th.cos(), th.sin(), torch.full_like(th, dth)], -1)


def test_render_draws_the_rod_at_the_angle():
    """The intensity centroid lies half a rod from the centre, in the pendulum's direction
    (up the image at th = 0, clockwise with th)."""
    th = torch.linspace(-math.pi, math.pi, 13, dtype=torch.float64)[:-1]
    S = 64
    im = render_pendulum(_states(th), S)
    assert im.shape == (12, S, S) and float(im.min()) >= 0 and float(im.max()) <= 1
    c = torch.arange(S, dtype=torch.float64) + 0.5 - S / 2
    w = im.sum((-1, -2))
    cx, cy = (im.sum(-2) * c).sum(-1) / w, (im.sum(-1) * c).sum(-1) / w
    est = torch.atan2(cx, -cy)
    err = torch.atan2((est - th).sin(), (est - th).cos()).abs()
    assert float(err.max()) < 0.02, err
    assert torch.allclose(torch.hypot(cx, cy), torch.full_like(cx, ROD_LENGTH * S / 2), rtol=0.1)


def test_render_rejects_bad_input():
    with pytest.raises(ValueError, match="size"):
        render_pendulum(_states([0.0]), 4)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        render_pendulum(torch.zeros(2, 4), 16)


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped")
def test_wrapper_with_gym_make_stacks_frames():
    from gymnasium.utils.env_checker import check_env

    env = PixelObservation(gym.make("dilqr_rl/Pendulum-v0"), size=32)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0, options={"state": np.array([-1.0, 0.0, 0.0])})
    assert obs.shape == (4, 32, 32) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert all((obs[i] == obs[0]).all() for i in range(4))  # after reset: the first image
    prev = obs
    for _ in range(3):
        obs, *_ = env.step(np.array([1.0], dtype=np.float32))
        assert (obs[:-1] == prev[1:]).all()  # the stack shifts by one frame
        x = torch.as_tensor(env.unwrapped.state, dtype=torch.float32)
        assert (obs[-1] == (render_pendulum(x, 32) * 255).round().to(torch.uint8).numpy()).all()
        prev = obs
    assert not (obs[-1] == obs[0]).all()  # the pushed pendulum moved


def test_wrapper_rejects_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        PixelObservation(gym.make("dilqr_rl/Pendulum-v0"), size=3)
    with pytest.raises(ValueError, match="frames"):
        PixelObservation(gym.make("dilqr_rl/Pendulum-v0"), frames=0)
    with pytest.raises(ValueError, match="pendulum"):
        PixelObservation(gym.make("dilqr_rl/CartPole-v0"))


def test_wrapper_with_sb3_vec_env():
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.preprocessing import is_image_space

    venv = make_vec_env("dilqr_rl/Pendulum-v0", n_envs=2, seed=0,
                        wrapper_class=PixelObservation, wrapper_kwargs={"size": 64})
    assert is_image_space(venv.observation_space)
    obs = venv.reset()
    assert obs.shape == (2, 4, 64, 64) and obs.dtype == np.uint8
    obs, *_ = venv.step(np.zeros((2, 1), dtype=np.float32))
    assert obs.shape == (2, 4, 64, 64)
    model = PPO("CnnPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, seed=0, device="cpu")
    model.learn(16)
    assert model.num_timesteps >= 16


@pytest.fixture(scope="module")
def tiny_data():
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        return make_visual_data(4, 8, horizon=5, seed=3)


def test_training_loss_decreases(tiny_data):
    """A tiny end-to-end budget (the whole set as one batch, every horizon step decoded): the
    total loss and the prediction loss go down for both models."""
    for cls in (VisualDiLQR, LatentAR):
        torch.manual_seed(0)
        model = cls(horizon=5, size=16, width=4, hidden=32)
        hist = train_model(model, tiny_data, steps=25, batch=len(tiny_data), seed=0, lr=5e-3,
                           decode_steps=6)
        first, last = hist[0], np.mean([h["loss"] for h in hist[-3:]])
        assert last < 0.8 * first["loss"], (cls.__name__, first, last)
        assert hist[-1]["pred"] < first["pred"]


def _loss(model, data, idx, steps):
    """Imitation + prediction (at ``steps``) without the state supervision: the encoder is
    reached only through what the plan does with ``x0``."""
    pred = model(data.frames(idx, model.encoder.size), steps)
    target = data.future(idx, steps, model.encoder.size)
    t = loss_terms(pred, target, data.x[idx], data.u[idx], 2.0)
    return t["imit"] + t["pred"], pred


def _encoder_grad(model, data, idx, steps, detach):
    model.zero_grad()
    pred = model(data.frames(idx, model.encoder.size), steps, detach_plan=detach)
    t = loss_terms(pred, data.future(idx, steps, model.encoder.size), data.x[idx], data.u[idx],
                   2.0)
    (t["imit"] + t["pred"]).backward()
    return [None if p.grad is None else p.grad.clone() for p in model.encoder.parameters()]


def test_gradient_reaches_the_encoder_through_dilqr(tiny_data):
    """The encoder's gradient of imitation + prediction: through the implicit gradient it is
    finite and non-zero; with the solve detached only the decoded step 0 reaches the encoder,
    and with only future steps decoded nothing does; the difference is the DiLQR path."""
    torch.manual_seed(0)
    model = VisualDiLQR(horizon=5, size=16, width=4, hidden=32, init_params={"g": 12.0})
    idx = torch.arange(8)
    future = torch.arange(1, 6)
    g_imp = _encoder_grad(model, tiny_data, idx, future, detach=False)
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in g_imp)
    assert all(float(g.abs().sum()) > 0 for g in g_imp)
    g_det = _encoder_grad(model, tiny_data, idx, future, detach=True)
    assert all(g is None or float(g.abs().sum()) == 0 for g in g_det)
    every = torch.arange(6)  # with step 0 decoded, the detached solve still gets that path
    g_all = _encoder_grad(model, tiny_data, idx, every, detach=False)
    g_dir = _encoder_grad(model, tiny_data, idx, every, detach=True)
    diff = sum(float((a - b).norm()) for a, b in zip(g_all, g_dir, strict=True))
    assert diff > 1e-3 * sum(float(a.norm()) for a in g_all)
    # the physical parameters get theirs through the same solve
    model.zero_grad()
    _loss(model, tiny_data, idx, future)[0].backward()
    g_phys = torch.stack([p.grad for p in model.dilqr.dynamics.parameters()])
    assert bool(torch.isfinite(g_phys).all()) and float(g_phys.abs().sum()) > 0


def test_encoder_gradient_matches_finite_differences(tiny_data):
    """float64, tight solves: the directional derivative of imitation + prediction along a
    random direction of the encoder's weights, by the implicit gradient, equals central
    differences of the converged loss."""
    torch.manual_seed(1)
    model = VisualDiLQR(horizon=5, size=16, width=4, hidden=32, init_params={"g": 12.0}).double()
    task = dl.tasks.get("pendulum")
    model.dilqr.config = task.config(max_iter=200, tol=1e-12)
    idx, steps = torch.arange(6), torch.arange(1, 6)
    params = list(model.encoder.parameters())
    v = [torch.randn_like(p) for p in params]
    loss, pred = _loss(model, tiny_data, idx, steps)
    assert bool(pred.converged.all())
    grads = torch.autograd.grad(loss, params)
    exact = sum(float((g * d).sum()) for g, d in zip(grads, v, strict=True))
    h, vals = 1e-6, []
    with torch.no_grad():
        for s in (1.0, -1.0):
            for p, d in zip(params, v, strict=True):
                p.add_(s * h * d)
            vals.append(float(_loss(model, tiny_data, idx, steps)[0]))
            for p, d in zip(params, v, strict=True):
                p.sub_(s * h * d)
    fd = (vals[0] - vals[1]) / (2 * h)
    assert abs(exact - fd) <= 1e-5 * abs(fd) + 1e-9, (exact, fd)


def test_visual_command_writes_report(tmp_path):
    """``dilqr-rl visual`` with a tiny budget: the report's shapes, both models scored at every
    horizon step, the closed loop judged on every start, and the figures."""
    from dilqr_rl.cli import main

    args = ["visual", "--episodes", "3", "--test-episodes", "1", "--episode-steps", "6",
            "--horizon", "4", "--size", "16", "--width", "4", "--hidden", "16",
            "--pretrain-steps", "2", "--steps", "2", "--batch", "8", "--eval-samples", "4",
            "--closed-loop", "2", "--closed-loop-steps", "3", "--no-progress",
            "--out", str(tmp_path)]
    assert main(args) == 0
    r = json.loads((tmp_path / "visual_pendulum.json").read_text())
    for kind in ("dilqr", "baseline"):
        assert len(r["summary"][kind]["mse_mean"]) == 5
        assert all(math.isfinite(v) for v in r["seeds"][0][kind]["mse_per_step"])
    assert len(r["seeds"][0]["closed_loop"]["success"]) == 2
    assert set(r["seeds"][0]["dilqr"]["params"]) == {"g", "m", "l"}
    for name in ("visual_pendulum.png", "visual_pendulum_frames.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_visual_command_rejects_bad_flags(capsys):
    from dilqr_rl.cli import main

    for bad, flag in ((["--test-episodes", "5", "--episodes", "5"], "--test-episodes"),
                      (["--size", "24"], "--size"), (["--init-params", "q=1"], "--init-params"),
                      (["--lr", "0"], "--lr"), (["--closed-loop-steps", "0"],
                                                 "--closed-loop-steps")):
        with pytest.raises(SystemExit) as e:
            main(["visual", *bad])
        assert e.value.code == 2
        assert flag in capsys.readouterr().err
