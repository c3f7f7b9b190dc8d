"""Imitation learning through DiLQR (the DiLQR paper's section 5.2 and appendix A.2, following
DiffMPC's ``imitation_nonconvex``).

A learner sees expert initial states ``x0 (B, n)`` and expert controls ``u* (B, T, m)`` and
minimizes the imitation loss ``mean |u(x0) - u*|^2`` (``sysid``: the next-state error). One
training loop (:func:`train`) serves every learner with the same data, batches and seeds:

================ ===========================================================================
learner          what is learned, and how the gradient is computed
================ ===========================================================================
``dilqr.dx``     dynamics parameters (pendulum ``g, m, l``; cartpole ``g, m_cart, m_pole, l``;
                 rocket ``Jx, Jy, Jz, m, l``), cost known; exact fixed-point gradient
``dilqr.cost``   cost weights (``sigmoid`` of a logit, as DiffMPC) and goal, dynamics known;
                 goal and weights alternate every 10 epochs (goal first, as DiffMPC)
``diffmpc.dx``   as ``dilqr.dx`` with ``grad="last_lqr"`` (DiffMPC's gradient)
``diffmpc.cost`` as ``dilqr.cost`` with ``grad="last_lqr"``
``unroll.dx``    as ``dilqr.dx`` with ``grad="unroll"`` (autodiff through every iteration)
``sysid``        dynamics parameters fitted on next-state prediction error; controls from the
                 known-cost iLQR with the fitted model
``nn``           DiffMPC's LSTM policy ``x0 -> u (T, m)``
``mlp``          an MLP policy ``x0 -> u (T, m)``
================ ===========================================================================

Defaults as the paper: RMSprop ``lr = 1e-2``, ``alpha`` (decay) ``0.5`` for the model
learners, Adam ``1e-3`` for the networks, batch 32. The controllers run in float64 with
one thread; every minibatch is one batched DiLQR call, warm-started per trajectory from that
trajectory's previous solution (a ``u`` cache per split).

**Non-physical parameters.** Nothing is clamped, for any learner: a dynamics step may leave
a parameter ``<= 0``; the solver still solves (the models stay finite for negative masses and
lengths as long as no denominator is exactly zero). ``nonphysical_final`` says whether the
run ended with a parameter ``<= 0``, ``nonphysical_frac`` the fraction of optimizer steps
after which one was. If a step makes the parameters, the loss or the solution non-finite
(or the solver raises), the run stops there and is recorded as ``diverged``, with the last
finite metrics kept.

Metrics per evaluated epoch: train / val / test imitation loss, model loss (``dx``:
``mean (theta_hat - theta)^2``; ``cost``: ``mean`` over ``[weights; goal]``), the
identifiable model loss for the pendulum (only ``g / l`` and ``m l^2`` enter its dynamics, so
``(g, m, l)`` itself is identifiable only up to that family), unconverged solves, autograd
memory (bytes saved for backward in one training step) and wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import dilqr_rl as dl

from .baselines import LSTMPolicy, MLPPolicy, sysid_loss
from .data import ENVS, EnvSpec, ExpertData, env_spec, make_expert_data

__all__ = ["LEARNERS", "Args", "check_args", "train", "make_learner", "main_imitate",
           "main_study", "imitation_loss", "plot_run"]

LEARNERS = ("dilqr.dx", "dilqr.cost", "diffmpc.dx", "diffmpc.cost", "unroll.dx", "sysid",
            "nn", "mlp")
F64 = torch.float64
_GRAD = {"dilqr": "implicit", "diffmpc": "last_lqr", "unroll": "unroll"}


@dataclass
class Args:
    """Settings of one imitation run (CleanRL style: one field, one docstring)."""

    env: str = "pendulum"
    """environment: ``pendulum``, ``cartpole`` or ``rocket``"""
    learner: str = "dilqr.dx"
    """one of ``LEARNERS``"""
    n_train: int = 10
    """number of expert training trajectories (the paper: 10, 50, 100)"""
    u_bound: float | None = None
    """override the environment's control bound ``|u_i| <= u_bound`` (expert and learner)"""
    n_val: int = 10
    """validation trajectories"""
    n_test: int = 10
    """test trajectories"""
    epochs: int = 100
    """passes over the training set"""
    batch_size: int = 32
    """minibatch size (one batched DiLQR call per minibatch)"""
    seed: int = 0
    """seed of the shuffling and the network initialization"""
    data_seed: int | None = None
    """seed of the expert data's initial states (default: ``seed``)"""
    lr: float = 1e-2
    """RMSprop learning rate of the model learners (paper: 1e-2)"""
    lr_final: float | None = None
    """if set, decay the learning rate geometrically to this value over the epochs (default:
    constant, as the paper)"""
    rmsprop_alpha: float = 0.5
    """RMSprop smoothing constant ("decay 0.5" in the paper, DiffMPC's ``alpha``)"""
    nn_lr: float = 1e-3
    """Adam learning rate of the network policies"""
    alternate_every: int = 10
    """cost learning: switch between goal and weights every this many epochs"""
    max_iter: int = 200
    """iLQR iteration cap of the learners' controller"""
    tol: float = 1e-8
    """iLQR relative step tolerance of the learners' controller"""
    warm_start: bool = True
    """warm-start each trajectory's solve from its previous solution (a ``u`` cache)"""
    restart_warmstart_every: int = 50
    """reset the warm-start caches to zeros (the expert's start) every this many epochs, as
    DiffMPC does; 0 never resets"""
    eval_every: int = 1
    """evaluate val / test imitation loss every this many epochs (and at the last one)"""
    data: str | None = None
    """expert data ``.npz`` to load (default: generate in memory)"""
    out: str = "runs/imitate"
    """output folder (JSON, PNG)"""
    progress: bool = True
    """show a progress bar"""


# ---------------------------------------------------------------------------- learners
def imitation_loss(u: Tensor, u_expert: Tensor) -> Tensor:
    """``mean (u - u_expert)^2`` over ``(B, T, m)``."""
    return (u - u_expert).pow(2).mean()


class _SavedBytes:
    """Counts the bytes autograd saves for backward (the memory a backward needs)."""

    def __init__(self) -> None:
        self.bytes = 0

    def __enter__(self) -> _SavedBytes:
        def pack(t: Tensor) -> Tensor:
            self.bytes += t.numel() * t.element_size()
            return t

        self._ctx = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


class Learner(nn.Module):
    """Common interface: ``train_loss``, ``predict``, ``model_loss``, ``optimizer``."""

    kind = "none"  # "dx", "cost" or "none"
    uses_solver = False

    def __init__(self, spec: EnvSpec, args: Args):
        super().__init__()
        self.spec, self.args = spec, args
        self.theta_true = torch.tensor(spec.theta, dtype=F64)
        self.cost_true = torch.cat([torch.tensor(spec.weights, dtype=F64),
                                    torch.tensor(spec.goal, dtype=F64)])
        self.unconverged = 0

    def predict(self, x0: Tensor, u_init: Tensor | None) -> Tensor:
        """Controls ``(B, T, m)`` from ``x0 (B, n)`` (differentiable where learnable)."""
        raise NotImplementedError

    def train_loss(self, x: Tensor, u: Tensor, u_init: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(loss, predicted u (B, T, m))`` on expert states ``x (B, T+1, n)``, controls
        ``u (B, T, m)``."""
        pred = self.predict(x[:, 0], u_init)
        return imitation_loss(pred, u), pred

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(self.parameters(), lr=self.args.lr,
                                   alpha=self.args.rmsprop_alpha)

    def before_step(self, epoch: int) -> None:
        """Hook between ``backward`` and ``step`` (cost learners mask one group here)."""

    def learned(self) -> Tensor | None:
        """The learned model parameters ``(p,)`` (dx) or ``[weights; goal]`` (cost)."""
        return None

    def model_loss(self) -> float:
        v = self.learned()
        if v is None:
            return math.nan
        ref = self.theta_true if self.kind == "dx" else self.cost_true
        return float((v.detach() - ref).pow(2).mean())

    def identifiable_loss(self) -> float:
        """Pendulum dx: ``mean`` squared relative error of ``(g / l, m l^2)``; else NaN."""
        v = self.learned()
        if v is None or self.kind != "dx" or self.spec.name != "pendulum":
            return math.nan
        g, m, l = v.detach()
        G, M, L = self.theta_true
        return float(((g / l) / (G / L) - 1) ** 2 + ((m * l * l) / (M * L * L) - 1) ** 2) / 2

    def nonphysical(self) -> bool:
        v = self.learned()
        return bool(self.kind == "dx" and v is not None and (v.detach() <= 0).any())


class MPCLearner(Learner):
    """DiLQR controller with learnable dynamics parameters (``dx``) or cost (``cost``).

    :param what: ``"dx"`` or ``"cost"``; :param grad: the layer's gradient mode
    """

    uses_solver = True

    def __init__(self, spec: EnvSpec, args: Args, what: str, grad: str):
        super().__init__(spec, args)
        self.kind = what
        n = spec.n_state
        cfg = dl.ILQRConfig(max_iter=args.max_iter, tol=args.tol, on_unconverged="warn")
        self.ctrl = dl.DiLQR(spec.dynamics(), spec.cost(), horizon=spec.horizon,
                             u_lower=-spec.u_bound, u_upper=spec.u_bound, config=cfg, grad=grad)
        if what == "dx":
            self.theta = nn.Parameter(torch.tensor(spec.theta_init, dtype=F64))
        else:
            # DiffMPC: q = sigmoid(logit) with logit = 0 (q = 0.5), linear term 0 (goal 0)
            self.w_logit = nn.Parameter(torch.zeros(len(spec.weights), dtype=F64))
            self.goal = nn.Parameter(torch.zeros(len(spec.goal), dtype=F64))
        self._n = n

    def weights(self) -> Tensor:
        return torch.sigmoid(self.w_logit)

    def learned(self) -> Tensor:
        if self.kind == "dx":
            return self.theta
        return torch.cat([self.weights(), self.goal])

    def solve(self, x0: Tensor, u_init: Tensor | None) -> dl.Solution:
        if self.kind == "dx":
            kw: dict[str, Tensor] = {"params": self.theta}
        else:
            w = self.weights()
            kw = {"weights": w, "goal": self.goal, "terminal_weights": w[: self._n]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dl.UnconvergedWarning)  # counted below instead
            sol = self.ctrl(x0, u_init=u_init, **kw)
        self.unconverged += int((~sol.converged).sum())
        return sol

    def predict(self, x0: Tensor, u_init: Tensor | None) -> Tensor:
        return self.solve(x0, u_init).u

    def before_step(self, epoch: int) -> None:
        if self.kind != "cost":
            return
        # DiffMPC alternates p (goal) and q (weights), starting with p
        learn_weights = (epoch // self.args.alternate_every) % 2 == 1
        frozen = self.goal if learn_weights else self.w_logit
        if frozen.grad is not None:
            frozen.grad.zero_()


class SysIdLearner(Learner):
    """Dynamics parameters from next-state prediction; controls from the known-cost iLQR."""

    kind = "dx"
    uses_solver = True

    def __init__(self, spec: EnvSpec, args: Args):
        super().__init__(spec, args)
        self.mpc = MPCLearner(spec, args, "dx", "implicit")
        self.dyn = spec.dynamics()

    def learned(self) -> Tensor:
        return self.mpc.theta

    def predict(self, x0: Tensor, u_init: Tensor | None) -> Tensor:
        with torch.no_grad():
            u = self.mpc.predict(x0, u_init)
        self.unconverged = self.mpc.unconverged
        return u

    def train_loss(self, x: Tensor, u: Tensor, u_init: Tensor | None) -> tuple[Tensor, Tensor]:
        pred = self.predict(x[:, 0], u_init)
        return sysid_loss(self.dyn, self.mpc.theta, x, u), pred


class NNLearner(Learner):
    """A network policy (float32), Adam."""

    def __init__(self, spec: EnvSpec, args: Args, arch: str):
        super().__init__(spec, args)
        cls = LSTMPolicy if arch == "lstm" else MLPPolicy
        self.policy = cls(spec.n_state, spec.n_ctrl, spec.horizon)

    def predict(self, x0: Tensor, u_init: Tensor | None) -> Tensor:
        return self.policy(x0.float()).double()

    def optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.args.nn_lr)


def make_learner(args: Args, spec: EnvSpec) -> Learner:
    """The learner named ``args.learner`` (see :data:`LEARNERS`)."""
    if args.learner not in LEARNERS:
        raise ValueError(f"unknown learner {args.learner!r}; choose one of {LEARNERS}")
    if args.learner == "sysid":
        return SysIdLearner(spec, args)
    if args.learner in ("nn", "mlp"):
        return NNLearner(spec, args, "lstm" if args.learner == "nn" else "mlp")
    method, what = args.learner.split(".")
    return MPCLearner(spec, args, what, _GRAD[method])


# ---------------------------------------------------------------------------- training
def _finite(*ts: Tensor | None) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in ts)


def _eval_split(learner: Learner, x: Tensor, u: Tensor, cache: Tensor, bs: int) -> float:
    """Imitation loss on a split (batched, warm-started from and updating ``cache``)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for idx in torch.arange(x.shape[0]).split(bs):
            pred = learner.predict(x[idx, 0], cache[idx] if learner.uses_solver else None)
            if not _finite(pred):
                return math.nan
            cache[idx] = pred
            total += float((pred - u[idx]).pow(2).sum())
            count += pred.numel()
    return total / count


def train(args: Args, data: ExpertData | None = None) -> dict[str, Any]:
    """Train one learner; returns the run record (JSON-able): ``args``, ``history`` (one entry
    per evaluated epoch) and ``final``.

    :param args: :class:`Args`
    :param data: expert data (default: generated from ``args.data`` or ``args.data_seed``)
    """
    # tiny batched solves: one thread is ~100x faster (docs/pitfalls.md, "Threads")
    torch.set_num_threads(1)
    if data is not None and args.u_bound is None:
        args = dataclasses.replace(args, u_bound=data.config.get("u_bound"))
    spec = env_spec(args.env, args.u_bound)
    if data is None:
        if args.data:
            data = ExpertData.load(args.data)
        else:
            seed = args.seed if args.data_seed is None else args.data_seed
            data = make_expert_data(args.env, max(args.n_train, 1), args.n_val, args.n_test,
                                    seed=seed, u_bound=args.u_bound)
    data.validate()  # fields may have been changed since it was made or loaded
    if data.env != args.env:
        raise ValueError(f"data is for {data.env!r}, args.env is {args.env!r}")
    if float(data.config.get("u_bound", spec.u_bound)) != spec.u_bound:
        raise ValueError(f"data has |u| <= {data.config.get('u_bound')}, the learner "
                         f"{spec.u_bound}; pass the same u_bound")
    torch.manual_seed(args.seed)
    learner = make_learner(args, spec)
    opt = learner.optimizer()
    sched = None
    if args.lr_final is not None and args.epochs > 1:
        base = args.nn_lr if args.learner in ("nn", "mlp") else args.lr
        gamma = (args.lr_final / base) ** (1.0 / (args.epochs - 1))
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    gen = torch.Generator().manual_seed(args.seed)
    x_tr, u_tr = data.split("train", args.n_train)
    x_va, u_va = data.split("val")
    x_te, u_te = data.split("test")
    cache = {k: torch.zeros_like(u) for k, u in (("train", u_tr), ("val", u_va),
                                                  ("test", u_te))}
    history: list[dict[str, Any]] = []
    steps = nonphys_steps = 0
    diverged_at: int | None = None
    t_train = t_eval = 0.0
    saved_bytes = 0
    bar = None
    if args.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=args.epochs, desc=f"{args.env} {args.learner} n={args.n_train} "
                   f"s={args.seed}", leave=False, dynamic_ncols=True)
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        if not args.warm_start or (args.restart_warmstart_every > 0
                                   and epoch % args.restart_warmstart_every == 0):
            for c in cache.values():
                c.zero_()
        tr_sum, tr_n = 0.0, 0
        for mb_idx in torch.randperm(x_tr.shape[0], generator=gen).split(args.batch_size):
            mb_x, mb_u = x_tr[mb_idx], u_tr[mb_idx]
            try:
                with _SavedBytes() as sb:
                    loss, pred = learner.train_loss(mb_x, mb_u, cache["train"][mb_idx])
                saved_bytes = max(saved_bytes, sb.bytes)
                ok = _finite(loss, pred)
                if ok:
                    opt.zero_grad()
                    loss.backward()
                    learner.before_step(epoch)
                    ok = all(_finite(p.grad) for p in learner.parameters())
            except (ValueError, RuntimeError) as e:  # e.g. non-finite dynamics parameters
                ok = False
                warnings.warn(f"{args.learner}: solve failed at epoch {epoch}: {e}",
                              RuntimeWarning)
            if not ok:
                diverged_at = epoch
                break
            if args.warm_start:
                cache["train"][mb_idx] = pred.detach()
            tr_sum += float((pred.detach() - mb_u).pow(2).sum())
            tr_n += pred.numel()
            opt.step()
            steps += 1
            nonphys_steps += learner.nonphysical()
            if learner.learned() is not None and not _finite(learner.learned()):
                diverged_at = epoch
                break
        t_train += time.perf_counter() - t0
        if sched is not None:
            sched.step()
        if diverged_at is not None:
            break
        last = epoch == args.epochs - 1
        if epoch % args.eval_every == 0 or last:
            t0 = time.perf_counter()
            try:
                val = _eval_split(learner, x_va, u_va, cache["val"], args.batch_size)
                test = _eval_split(learner, x_te, u_te, cache["test"], args.batch_size)
            except (ValueError, RuntimeError):
                val = test = math.nan
            t_eval += time.perf_counter() - t0
            v = learner.learned()
            history.append(dict(
                epoch=epoch, steps=steps, train_im=tr_sum / max(tr_n, 1), val_im=val,
                test_im=test, model_loss=learner.model_loss(),
                ident_loss=learner.identifiable_loss(),
                params=None if v is None else v.detach().tolist(),
                nonphysical=learner.nonphysical(), unconverged=learner.unconverged,
                train_time=t_train, eval_time=t_eval))
        if bar is not None:
            bar.update(1)
            if history:
                h = history[-1]
                bar.set_postfix(im=f"{h['train_im']:.2e}", model=f"{h['model_loss']:.2e}")
    if bar is not None:
        bar.close()
    final = dict(history[-1]) if history else {}
    final.update(diverged=diverged_at is not None, diverged_at=diverged_at,
                 nonphysical_final=learner.nonphysical(),
                 nonphysical_frac=nonphys_steps / max(steps, 1),
                 saved_bytes_per_step=saved_bytes,
                 train_time_per_step=t_train / max(steps, 1), steps=steps)
    truth = (spec.theta if learner.kind == "dx" else
             list(spec.weights) + list(spec.goal) if learner.kind == "cost" else None)
    return dict(args=dataclasses.asdict(args), truth=truth, param_names=list(spec.param_names),
                history=history, final=final)


# ---------------------------------------------------------------------------- output
def plot_run(record: dict[str, Any], path: str | Path, others: list[dict] | None = None) -> Path:
    """Imitation losses and learned parameters (relative to the truth) over the epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [record, *(others or [])]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, r in enumerate(runs):
        h = r["history"]
        ep = [e["epoch"] for e in h]
        c = f"C{i}"
        name = r["args"]["learner"]
        axes[0].semilogy(ep, [e["train_im"] for e in h], c, label=f"{name} train")
        axes[0].semilogy(ep, [e["test_im"] for e in h], c, ls="--", label=f"{name} test")
        if r["truth"] is not None and h and h[0]["params"] is not None:
            truth = r["truth"]
            names = r["param_names"] if len(truth) == len(r["param_names"]) else \
                [f"c{j}" for j in range(len(truth))]
            for j, tv in enumerate(truth):
                if tv == 0:
                    continue
                axes[1].plot(ep, [e["params"][j] / tv for e in h], c,
                             ls=["-", "--", ":", "-."][j % 4],
                             label=f"{name} {names[j]}" if len(truth) <= 5 else None)
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[0].set(xlabel="epoch", ylabel="imitation loss", title="imitation loss")
    axes[1].set(xlabel="epoch", ylabel="learned / true", title="learned parameters")
    axes[0].legend(fontsize=7)
    if axes[1].get_legend_handles_labels()[0]:
        axes[1].legend(fontsize=7)
    a = record["args"]
    fig.suptitle(f"{a['env']}, train={a['n_train']}, seed={a['seed']}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_fields(obj: Any, min_int: dict[str, int], positive: tuple[str, ...] = (),
                 nonneg: tuple[str, ...] = ()) -> None:
    """``ValueError`` naming the flag of the first field out of range: ints ``>=`` their
    minimum (``None`` allowed where the default is ``None``), floats finite and ``> 0``
    (``positive``) or ``>= 0`` (``nonneg``)."""
    for k, lo in min_int.items():
        v = getattr(obj, k)
        if v is None and getattr(type(obj), k, 0) is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{_flag(k)} must be an integer >= {lo}, got {v!r}")
    for k in (*positive, *nonneg):
        v = getattr(obj, k)
        if v is None and getattr(type(obj), k, 0) is None:
            continue
        ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
              and (v > 0 if k in positive else v >= 0))
        if not ok:
            raise ValueError(f"{_flag(k)} must be a finite number "
                             f"{'> 0' if k in positive else '>= 0'}, got {v!r}")


def check_args(args: Args) -> None:
    """``ValueError`` naming the flag of the first bad setting of ``dilqr-rl imitate``."""
    if args.env not in ENVS:
        raise ValueError(f"--env must be one of {ENVS}, got {args.env!r}")
    if args.learner not in LEARNERS:
        raise ValueError(f"--learner must be one of {LEARNERS}, got {args.learner!r}")
    check_fields(args, {"n_train": 1, "n_val": 1, "n_test": 1, "epochs": 1, "batch_size": 1,
                        "seed": 0, "data_seed": 0, "alternate_every": 1, "max_iter": 1,
                        "restart_warmstart_every": 0, "eval_every": 1},
                 positive=("u_bound", "lr", "lr_final", "nn_lr"),
                 nonneg=("rmsprop_alpha", "tol"))


def _parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser from a dataclass (``--field value``; booleans as ``--[no-]field``)."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    doc = _field_docs(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                           help=doc.get(f.name))
        else:
            typ = {"int": int, "float": float, "str": str, "int | None": _optional(int),
                   "float | None": _optional(float),
                   "str | None": _optional(str)}.get(str(f.type), str)
            p.add_argument(flag, type=typ, default=f.default, help=doc.get(f.name))
    return p


def _optional(typ: type):
    """argparse type: ``none`` -> ``None``, else ``typ(value)``."""

    def conv(v: str):
        return None if v.lower() == "none" else typ(v)

    conv.__name__ = typ.__name__
    return conv


def _field_docs(cls: type) -> dict[str, str]:
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    out = {}
    for a, b in zip(body, body[1:], strict=False):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and \
                isinstance(b.value, ast.Constant):
            out[a.target.id] = str(b.value.value).replace("%", "%%")  # type: ignore[union-attr]
    return out


def main_imitate(argv: list[str]) -> int:
    """``dilqr-rl imitate``: learn the model from expert actions, print learned vs true, plot."""
    p = _parser(Args, "dilqr-rl imitate", "Behaviour cloning through DiLQR: learn the "
                "dynamics (--mode dx) or the cost (--mode cost) from expert actions.")
    p.add_argument("--mode", choices=["dx", "cost"], default=None,
                   help="shorthand: --learner {method}.{mode}")
    p.add_argument("--method", choices=["dilqr", "diffmpc", "unroll"], default="dilqr",
                   help="with --mode: the gradient (DiLQR exact, DiffMPC last-LQR, unrolled)")
    p.add_argument("--compare", action=argparse.BooleanOptionalAction, default=False,
                   help="also run the DiffMPC gradient with the same data and seed")
    # The demo's defaults: with the paper's |u| <= 2 most pendulum expert controls sit on the
    # bound and carry no gradient, and (g, m, l) stalls in a local minimum (see the study);
    # with |u| <= 100 every control is informative and a decaying step recovers the model.
    # ``--u-bound 2 --lr 0.01 --lr-final none --n-train 10`` is the paper's setting.
    p.set_defaults(n_train=5, epochs=220, lr=0.1, lr_final=0.002, u_bound=100.0, eval_every=10)
    ns = vars(p.parse_args(argv))
    mode, method, compare = ns.pop("mode"), ns.pop("method"), ns.pop("compare")
    if mode is not None:
        ns["learner"] = f"{method}.{mode}"
    args = Args(**ns)
    try:
        check_args(args)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.data:
        try:
            data = ExpertData.load(args.data)
        except (OSError, ValueError) as e:
            p.error(f"--data {args.data}: {e}")
        if data.env != args.env:
            p.error(f"--data holds {data.env!r} trajectories, --env is {args.env!r}")
        if args.n_train > data.n_train:
            p.error(f"--n-train {args.n_train}: --data has {data.n_train} training trajectories")
        if float(data.config.get("u_bound", args.u_bound)) != args.u_bound:
            p.error(f"--u-bound {args.u_bound:g}: --data was made with |u| <= "
                    f"{data.config['u_bound']:g}; pass the same --u-bound")
    else:
        data = make_expert_data(args.env, args.n_train, args.n_val, args.n_test,
                                seed=args.seed if args.data_seed is None else args.data_seed,
                                u_bound=args.u_bound)
    out = Path(args.out)
    data_path = data.save(out / f"expert_{args.env}_seed{data.seed}.npz")
    print(f"expert data: {data.x.shape[0]} trajectories ({args.n_train} train) "
          f"-> {data_path} ({time.perf_counter() - t0:.1f} s)")
    records = [train(args, data)]
    if compare and "." in args.learner:
        other = args.learner.replace(args.learner.split(".")[0], "diffmpc")
        if other != args.learner:
            records.append(train(dataclasses.replace(args, learner=other), data))
    for r in records:
        _print_summary(r)
    tag = f"{args.env}_{args.learner}_n{args.n_train}_s{args.seed}"
    (out / f"{tag}.json").write_text(json.dumps(records, indent=1))
    png = plot_run(records[0], out / f"{tag}.png", records[1:])
    print(f"wrote {out / (tag + '.json')} and {png} ({time.perf_counter() - t0:.0f} s total)")
    return 0


def _print_summary(r: dict[str, Any]) -> None:
    f, a = r["final"], r["args"]
    print(f"\n{a['learner']} on {a['env']}: {f.get('steps', 0)} steps, "
          f"{f.get('train_time', 0):.1f} s training"
          + (f", DIVERGED at epoch {f['diverged_at']}" if f.get("diverged") else ""))
    if f.get("params") is not None and r["truth"] is not None:
        names = r["param_names"] if len(r["truth"]) == len(r["param_names"]) else \
            [f"w{j}" for j in range(len(r["truth"]) // 2)] + \
            [f"goal{j}" for j in range(len(r["truth"]) // 2)]
        print(f"  {'param':>8} {'learned':>10} {'true':>10} {'rel.err':>8}")
        for nm, v, t in zip(names, f["params"], r["truth"], strict=True):
            rel = abs(v - t) / abs(t) if t != 0 else abs(v - t)
            print(f"  {nm:>8} {v:>10.4f} {t:>10.4f} {rel:>8.2%}")
    print(f"  imitation loss: train {f.get('train_im', math.nan):.3e}  "
          f"val {f.get('val_im', math.nan):.3e}  test {f.get('test_im', math.nan):.3e}")
    print(f"  model loss {f.get('model_loss', math.nan):.3e}"
          + (f"   identifiable (g/l, m l^2) loss {f['ident_loss']:.3e}"
             if not math.isnan(f.get("ident_loss", math.nan)) else "")
          + f"   non-physical at end: {f.get('nonphysical_final')}")


def main_study(argv: list[str]) -> int:
    """``dilqr-rl study imitation ...``: the paper's comparison (see ``agents/study.py``)."""
    if not argv or argv[0] != "imitation":
        print("usage: dilqr-rl study imitation [options]   (the only study so far)")
        return 2
    from .study import main as study_main

    return study_main(argv[1:])
