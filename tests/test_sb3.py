"""SB3 policies with a DiLQR actor: training, gradients, predict, save/load, the trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")
from stable_baselines3 import A2C, PPO, SAC, TD3  # noqa: E402

import dilqr_rl.envs  # noqa: E402,F401
from dilqr_rl import sb3  # noqa: E402

WRONG = {"dilqr_rl/Pendulum-v0": {"g": 7.0, "m": 1.3}, "dilqr_rl/MujocoPendulum-v0": {"l": 1.3},
         "dilqr_rl/CartPole-v0": {"m_pole": 0.13}, "dilqr_rl/MujocoCartPole-v0": {"l": 0.6},
         "dilqr_rl/Rocket-v0": {"m": 1.3}}
ALGOS = {"ppo": (PPO, sb3.DiLQRActorCriticPolicy), "a2c": (A2C, sb3.DiLQRActorCriticPolicy),
         "sac": (SAC, sb3.DiLQRSACPolicy), "td3": (TD3, sb3.DiLQRTD3Policy)}


def spec(env_id: str, **kw) -> sb3.ControllerSpec:
    return sb3.controller_spec(env_id, WRONG[env_id], horizon=kw.pop("horizon", 5),
                               max_iter=kw.pop("max_iter", 5), **kw)


def make(algo: str, env_id: str, learn: str = "dynamics", seed: int = 0, as_dict: bool = False,
         **spec_kw):
    cls, policy = ALGOS[algo]
    env = gym.make(env_id)
    kw: dict = {"seed": seed, "learning_rate": 1e-3}
    if algo == "ppo":
        kw.update(n_steps=32 if "Rocket" in env_id else 64, batch_size=32, n_epochs=1)
    elif algo == "a2c":
        kw.update(n_steps=16)
    else:
        kw.update(learning_starts=64, batch_size=16, train_freq=(16, "step"),
                  gradient_steps=1, buffer_size=1000)
    controller = spec(env_id, **spec_kw)
    return cls(policy, env, policy_kwargs={
        "controller": controller.to_dict() if as_dict else controller, "learn": learn}, **kw)


def loss_of(model, algo: str, obs: torch.Tensor) -> torch.Tensor:
    pol = model.policy
    if algo in ("ppo", "a2c"):
        pol.set_training_mode(True)
        act = torch.zeros(obs.shape[0], model.action_space.shape[0])
        _, logp, _ = pol.evaluate_actions(obs, act)
        return logp.sum()
    if algo == "sac":
        pol.actor.set_training_mode(True)
        a, logp = pol.actor.action_log_prob(obs)
        return a.sum() + logp.sum()
    pol.actor.set_training_mode(True)
    return pol.actor(obs).square().sum()


def sample_obs(env_id: str, n: int, seed: int = 0) -> np.ndarray:
    """Start states; for the pendulums near upright, where the first control is not on its
    bound (a bound-active first control has zero gradient: the constrained optimum does not
    move with the parameters)."""
    env = gym.make(env_id)
    if "Pendulum" not in env_id:
        return np.stack([env.reset(seed=seed + i)[0] for i in range(n)])
    th = np.random.default_rng(seed).uniform(-0.4, 0.4, n)
    return np.stack([np.cos(th), np.sin(th), 0 * th], -1).astype(np.float32)


#: (algo, env, env steps): every algorithm on every env. The rocket's 13-state solves (with
#: autograd Hessians of its FunctionCost task cost) are the slow ones: short horizon, few steps.
_STEPS = {"ppo": 192, "a2c": 96, "sac": 112, "td3": 112}
CASES = [(algo, env_id, (64 if algo in ("ppo", "a2c") else 96) if "Rocket" in env_id else steps)
         for algo, steps in _STEPS.items()
         for env_id in ("dilqr_rl/Pendulum-v0", "dilqr_rl/CartPole-v0",
                        "dilqr_rl/MujocoPendulum-v0", "dilqr_rl/MujocoCartPole-v0",
                        "dilqr_rl/Rocket-v0")]
#: the cases over ~5 s on 2 CPU cores (``pytest -m "not slow"`` keeps the others)
CASES = [pytest.param(*c, marks=pytest.mark.slow)
         if "Rocket" in c[1] or (c[0] == "ppo" and "CartPole" in c[1]) else c for c in CASES]


@pytest.mark.parametrize(("algo", "env_id", "steps"), CASES)
def test_learn_and_gradients(algo: str, env_id: str, steps: int) -> None:
    """Train for ``steps`` env steps; the updates and the RL loss's gradient reach the
    physical parameters."""
    fast = {"horizon": 3, "max_iter": 3} if "Rocket" in env_id else {}
    model = make(algo, env_id, **fast)
    actor = sb3.dilqr_actor(model.policy)
    theta0 = actor.ctrl.dynamics.theta().detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.learn(steps)
    assert model.num_timesteps >= steps
    assert actor.stats["solves"] > 0
    theta1 = actor.ctrl.dynamics.theta().detach()
    assert torch.isfinite(theta1).all()
    assert model._n_updates > 0
    if algo in ("ppo", "a2c"):  # (SAC/TD3 get few updates here, possibly all at a bound)
        assert not torch.equal(theta0, theta1), "no update reached the DiLQR parameters"
    obs = torch.as_tensor(sample_obs(env_id, 4))
    model.policy.zero_grad()
    loss_of(model, algo, obs).backward()
    grads = [p.grad for p in actor.ctrl.dynamics.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert all(p.grad is None for p in actor.ctrl.cost.parameters())  # learn="dynamics"


@pytest.mark.parametrize("learn", ["cost", "both", "cost_net", "dynamics+cost_net"])
def test_learn_keyword(learn: str) -> None:
    model = make("ppo", "dilqr_rl/Pendulum-v0", learn=learn)
    actor = sb3.dilqr_actor(model.policy)
    obs = torch.as_tensor(sample_obs("dilqr_rl/Pendulum-v0", 4))
    loss_of(model, "ppo", obs).backward()
    dyn_grad = [p.grad for p in actor.ctrl.dynamics.parameters()]
    cost_grad = [p.grad for p in actor.ctrl.cost.parameters()]
    assert all((g is not None) == ("dynamics" in learn or learn == "both") for g in dyn_grad)
    assert all((g is not None) == (learn in ("cost", "both")) for g in cost_grad)
    if "cost_net" in learn:
        last = list(actor.cost_net.parameters())[-1]
        assert last.grad is not None and float(last.grad.abs().sum()) > 0
    # every trainable parameter is in the optimizer, the controller's with its lr_scale
    opt_params = {id(p) for g in model.policy.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in opt_params for p in model.policy.parameters() if p.requires_grad)
    assert model.policy.optimizer.param_groups[1]["lr_scale"] == 30.0


def test_bad_keywords() -> None:
    with pytest.raises(ValueError, match="learn must be"):
        make("ppo", "dilqr_rl/Pendulum-v0", learn="weights")
    with pytest.raises(ValueError, match="unknown controller spec"):
        sb3.ControllerSpec.coerce({"env_id": "dilqr_rl/Pendulum-v0", "horizonn": 3})
    with pytest.raises(ValueError, match="unknown controller spec"):
        sb3.ControllerSpec.coerce({"task": "pendulum", "horizonn": 3})
    with pytest.raises(ValueError, match="pi=\\[\\]"):
        PPO(sb3.DiLQRActorCriticPolicy, gym.make("dilqr_rl/Pendulum-v0"),
            policy_kwargs={"controller": spec("dilqr_rl/Pendulum-v0"),
                           "net_arch": {"pi": [8], "vf": [8]}})


@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("grad", ["implicit", "last_lqr", "unroll"])
def test_predict_is_first_control(algo: str, grad: str) -> None:
    """``predict(deterministic=True)`` is the controller's first control divided by u_max."""
    env_id = "dilqr_rl/Pendulum-v0"
    model = make(algo, env_id, grad=grad, max_iter=20, horizon=8)
    obs = sample_obs(env_id, 5, seed=3)
    act, _ = model.predict(obs, deterministic=True)
    ctrl = spec(env_id, grad=grad, max_iter=20, horizon=8).build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        u0 = ctrl(torch.as_tensor(obs, dtype=torch.float64)).u[:, 0].detach().numpy()
    np.testing.assert_allclose(act, u0 / 2.0, rtol=0, atol=1e-6)
    assert act.dtype == np.float32
    if algo in ("ppo", "a2c"):  # the Gaussian's mean is the same action
        dist = model.policy.get_distribution(torch.as_tensor(obs))
        np.testing.assert_allclose(dist.distribution.mean.detach().numpy(), act, atol=1e-6)


def test_warm_start_rollout_vs_minibatch() -> None:
    """Rollouts warm-start from the shifted plan; training minibatches never do (but use the
    plan cache by observation)."""
    env_id = "dilqr_rl/Pendulum-v0"
    model = make("ppo", env_id)
    actor = sb3.dilqr_actor(model.policy)
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    model.predict(obs, deterministic=True)
    assert actor.use_sequential()
    assert actor.sequential.plans is not None and actor.sequential.plans.shape == (1, 5, 1)
    assert len(actor.plans) == 1
    # a far-away observation (a reset) does not take the warm start
    x0 = torch.as_tensor(-obs[None]).double()
    assert actor.initial_plans(torch.as_tensor(-obs[None]), x0) is None
    # training mode: no sequential warm start; an unseen batch starts from zeros
    model.policy.set_training_mode(True)
    assert not actor.use_sequential()
    batch = torch.as_tensor(sample_obs(env_id, 3, seed=50))
    assert actor.initial_plans(batch, batch.double()) is None
    # ... a seen observation starts from its rollout plan
    init = actor.initial_plans(torch.as_tensor(obs[None]), torch.as_tensor(obs[None]).double())
    assert init is not None and init.abs().sum() > 0 and init.dtype == torch.float64


def test_threads_and_unconverged_warned_once() -> None:
    assert torch.get_num_threads() == 1
    model = make("ppo", "dilqr_rl/Pendulum-v0", max_iter=1, horizon=10)
    obs = sample_obs("dilqr_rl/Pendulum-v0", 6)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            model.predict(obs, deterministic=True)
    msgs = [str(w.message) for w in rec if "DiLQR" in str(w.message)]
    assert len(msgs) == 1 and "shown once" in msgs[0]
    assert sb3.dilqr_actor(model.policy).stats["unconverged"] > 0


SAVE_LOAD = textwrap.dedent("""
    import json, sys, numpy as np, torch
    from stable_baselines3 import PPO, SAC
    from dilqr_rl.sb3 import ControllerSpec, dilqr_actor
    torch.set_num_threads(1)
    out = {}
    for name, cls in (("ppo", PPO), ("sac", SAC)):
        model = cls.load(sys.argv[1] + "/" + name)      # no custom_objects, fresh process
        obs = np.load(sys.argv[1] + "/obs.npy")
        act, _ = model.predict(obs, deterministic=True)
        sd = {k: v.tolist() for k, v in model.policy.state_dict().items()}
        spec = ControllerSpec.coerce(model.policy_kwargs["controller"])
        assert dilqr_actor(model.policy).spec == spec
        out[name] = {"act": act.tolist(), "state": sd, "spec": spec.to_dict(),
                     "cls": type(model.policy).__name__}
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_save_load_roundtrip_fresh_process(tmp_path) -> None:
    env_id = "dilqr_rl/Pendulum-v0"
    obs = sample_obs(env_id, 4, seed=77)
    np.save(tmp_path / "obs.npy", obs)
    ref = {}
    for name in ("ppo", "sac"):  # the spec as a dict (PPO) and as a ControllerSpec (SAC)
        model = make(name, env_id, learn="both" if name == "ppo" else "cost_net",
                     max_iter=20, horizon=8, as_dict=name == "ppo")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            model.learn(128)
        model.save(tmp_path / name)
        actor = sb3.dilqr_actor(model.policy)
        actor.reset()
        actor.plans.clear()  # the loaded model starts without cached plans
        act, _ = model.predict(obs, deterministic=True)
        ref[name] = (act, model.policy.state_dict(), model.policy_kwargs["controller"])
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "-c", SAVE_LOAD, str(tmp_path)], capture_output=True,
                         text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for name in ("ppo", "sac"):
        act, sd, spec_ = ref[name]
        assert out[name]["cls"].startswith("DiLQR")
        assert out[name]["spec"] == sb3.ControllerSpec.coerce(spec_).to_dict()
        assert set(out[name]["state"]) == set(sd)
        for k, v in sd.items():
            np.testing.assert_array_equal(np.asarray(out[name]["state"][k]), v.numpy(),
                                          err_msg=k)
        np.testing.assert_array_equal(np.asarray(out[name]["act"], dtype=np.float32), act)


@pytest.mark.slow
def test_trainer_resume_and_curve(tmp_path) -> None:
    from dilqr_rl.agents.rl import main_train, parse_args

    argv = ["--algo", "ppo", "--env", "dilqr_rl/Pendulum-v0", "--model-params", "g=7",
            "--horizon", "5", "--max-iter", "5", "--n-steps", "64", "--batch-size", "32",
            "--n-epochs", "1", "--eval-freq", "64", "--eval-episodes", "1",
            "--checkpoint-freq", "64", "--out-dir", str(tmp_path), "--no-progress-bar"]
    args = parse_args([*argv, "--total-timesteps", "64"])
    assert args.total_timesteps == 64 and args.progress_bar is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert main_train([*argv, "--total-timesteps", "64"]) == 0
        run = tmp_path / args.name
        assert (run / "checkpoints" / "model_64_steps.zip").exists()
        assert main_train([*argv, "--total-timesteps", "128", "--resume"]) == 0  # from 64
    recs = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert [r["timesteps"] for r in recs] == [0, 64, 128]
    assert "g" in recs[-1]["params"]
    assert (run / "learning_curve.png").stat().st_size > 0
    assert any((run / "tb").iterdir())
    assert PPO.load(run / "final_model").num_timesteps == 128


def _identifiable(p: dict) -> np.ndarray:
    """What pendulum transitions identify: ``(g / l, m l^2)``, as the task declares."""
    task = dilqr_rl.tasks.get("pendulum")
    theta = torch.tensor([p[k] for k in task.params], dtype=torch.float64)
    return np.array([float(v) for v in task.combinations(theta).values()])


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_system_id_recovers_identifiable_parameters(algo: str) -> None:
    """On Pendulum-v0 the model class is the env's physics, so fitting one-step transitions
    recovers g / l and m l^2 (the only combinations the dynamics depend on). The episodes end
    at 200 steps inside the 256 collected, so a reset observation used as the successor of an
    episode's last state would bias the fit."""
    env_id = "dilqr_rl/Pendulum-v0"
    cls, policy = ALGOS[algo]
    wrong = {"g": 14.0, "m": 1.4, "l": 0.6}
    kw: dict = ({"n_steps": 256, "batch_size": 64, "n_epochs": 1} if algo == "ppo" else
                {"learning_starts": 64, "batch_size": 16, "train_freq": (64, "step"),
                 "buffer_size": 1000})
    # learn="cost_net": the RL loss does not touch the physical parameters, only the fit does
    model = cls(policy, gym.make(env_id), seed=0, learning_rate=1e-3,
                policy_kwargs={"controller": sb3.controller_spec(env_id, wrong, horizon=5,
                                                                 max_iter=5),
                               "learn": "cost_net"}, **kw)
    cb = sb3.SystemIdCallback(every=128, steps=300, lr=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.learn(256, callback=cb)
    got = _identifiable(sb3.physical_params(model.policy))
    true = _identifiable(dict(dilqr_rl.tasks.get("pendulum").params))
    assert len(cb.history) == 2
    assert cb.history[-1]["loss_after"] < 1e-3 * cb.history[0]["loss_before"]
    np.testing.assert_allclose(got, true, rtol=2e-3)
    # the RL loss's parameters are untouched by the fit, and no gradient is left behind
    dyn = sb3.dilqr_actor(model.policy).ctrl.dynamics
    assert all(not p.requires_grad and p.grad is None for p in dyn.parameters())


def test_system_id_bad_arguments() -> None:
    with pytest.raises(ValueError, match="every"):
        sb3.SystemIdCallback(every=0)
    with pytest.raises(ValueError, match="lr"):
        sb3.SystemIdCallback(lr=0.0)
    from dilqr_rl.agents.rl import TrainArgs

    with pytest.raises(ValueError, match="sysid_every"):
        TrainArgs(policy="mlp", sysid_every=64)


def test_learned_cost_weights_stay_positive() -> None:
    """An RL step that would push a control weight through zero is projected back to the
    cost's declared lower bound, so the controller keeps a convex cost (it raises ValueError
    otherwise)."""
    model = make("sac", "dilqr_rl/Pendulum-v0", learn="cost")
    actor = sb3.dilqr_actor(model.policy)
    opt = model.policy.actor.optimizer
    group = next(g for g in opt.param_groups if g.get("lower") is not None)
    w = actor.ctrl.cost.weights
    assert any(p is w for p in group["params"])
    # a gradient pointing all weights up: Adam's first step moves each by ~lr * scale
    lr0 = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["lr"] = 10.0
    opt.zero_grad()
    (1e3 * w.sum()).backward()
    opt.step()
    floor = actor.ctrl.cost.lower_bounds()["weights"]
    assert group["lower"] == floor > 0
    assert bool((w >= floor).all()) and bool((w == floor).any())
    for g, lr in zip(opt.param_groups, lr0, strict=True):
        g["lr"] = lr
    # the controller still solves with the projected weights
    obs = torch.tensor([[1.0, 0.0, 0.0]])
    with torch.no_grad():
        a = actor(obs)
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("algo", ["ppo", "td3"])
def test_physical_parameters_stay_positive(algo: str) -> None:
    """Built-in models have positive parameters; an RL step that would push one through zero
    stops at the model's declared lower bound (PPO alone once drove l to -0.15)."""
    model = make(algo, "dilqr_rl/Pendulum-v0", learn="dynamics")
    actor = sb3.dilqr_actor(model.policy)
    opt = model.policy.optimizer if algo == "ppo" else model.policy.actor.optimizer
    dyn = actor.ctrl.dynamics
    bounds = dyn.lower_bounds()
    assert set(bounds) == set(dyn.param_names()) and all(v > 0 for v in bounds.values())
    for g in opt.param_groups:
        g["lr"] = 100.0
    opt.zero_grad()
    (1e3 * dyn.theta().sum()).backward()  # every parameter pushed down by ~lr * scale
    opt.step()
    got = dict(zip(dyn.param_names(), dyn.theta().detach().tolist(), strict=True))
    for k, v in got.items():
        assert v == pytest.approx(bounds[k], rel=1e-12), k
