"""Training, prediction error and closed loop of the pixel models (:mod:`.visual`).

One training step draws ``batch`` samples of the training split, renders their image stacks,
and scores the model on the expert's plan from that state:

- *prediction*: binary cross-entropy of the decoded frames against the true future frames at
  horizon step 0 and ``decode_steps - 1`` more random steps (drawn per batch; decoding all
  ``T+1`` frames of every sample costs ``T+1`` times the decoder);
- *imitation* (DiLQR only): the mean squared error of the planned controls against the
  expert's, over the squared control bound;
- *state*: the encoder's output against the true current state ``(cos, sin, thdot / 4)``,
  a supervised term that both models get (weight ``w_state``; 0 trains from the other two
  alone).

The DiLQR model's solve starts from the expert's controls during training (the same fixed
point when the model is right, in a few iterations instead of ten to thirty); evaluation and
the closed loop start from zero controls, as the expert does. The baseline is rolled out with
the expert's controls: it is told the actions, the DiLQR model has to plan them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import dilqr_rl as dl

from .visual import Decoder, Encoder, LatentAR, Prediction, VisualDiLQR, state_features
from .visual_data import VisualData

__all__ = ["LossWeights", "closed_loop", "evaluate", "loss_terms", "predict", "pretrain",
           "train_model"]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the training losses (see the module docstring)."""

    imit: float = 1.0
    pred: float = 1.0
    state: float = 1.0


def predict(model: VisualDiLQR | LatentAR, frames: Tensor, u_expert: Tensor,
            steps: Tensor | None = None, warm: bool = False) -> Prediction:
    """Either model's prediction from ``frames (B, F, S, S)``: DiLQR plans (from
    ``u_expert (B, T, 1)`` if ``warm``, else from zeros), the baseline rolls out ``u_expert``.
    """
    if isinstance(model, VisualDiLQR):
        return model(frames, steps, u_init=u_expert if warm else None)
    return model(frames, u_expert, steps)


def loss_terms(pred: Prediction, target: Tensor, x_expert: Tensor, u_expert: Tensor,
               u_max: float) -> dict[str, Tensor]:
    """The three losses of one batch.

    :param pred: the model's :class:`~.visual.Prediction` (logits at the ``K`` steps)
    :param target: true frames ``(B, K, S, S)`` in ``[0, 1]``
    :param x_expert: the expert plan's states ``(B, T+1, 3)`` (``[:, 0]``: the true state)
    :param u_expert: its controls ``(B, T, 1)``
    :param u_max: the control bound (imitation is in units of it)
    """
    out = {"pred": F.binary_cross_entropy_with_logits(pred.logits, target.to(pred.logits)),
           "state": (state_features(pred.x[:, 0])
                     - state_features(x_expert[:, 0].to(pred.x))).square().mean()}
    if pred.u is not None:
        out["imit"] = (pred.u - u_expert.to(pred.u)).square().mean() / u_max**2
    return out


def _steps(gen: torch.Generator, T: int, k: int) -> Tensor:
    """Step 0 and ``k - 1`` distinct random steps of ``1..T``, sorted."""
    rest = 1 + torch.randperm(T, generator=gen)[: max(min(k, T + 1) - 1, 0)]
    return torch.cat([torch.zeros(1, dtype=torch.long), rest.sort().values])


def train_model(model: VisualDiLQR | LatentAR, data: VisualData, *, steps: int, batch: int,
                seed: int, lr: float = 2e-3, param_lr: float = 1e-2, decode_steps: int = 6,
                weights: LossWeights = LossWeights(), clip: float = 1.0,
                progress: Callable[[int, dict[str, float]], None] | None = None
                ) -> list[dict[str, float]]:
    """Train ``model`` on ``data`` for ``steps`` Adam steps of ``batch`` samples (the DiLQR
    model's physical parameters with RMSprop at ``param_lr``, decay 0.5, as the paper's
    imitation runs, projected onto their lower bounds after each step). The networks'
    gradient is clipped to norm ``clip``: early on, the plan of a wrong model is steep in
    ``x0`` near the hanging state, and one batch could undo the encoder's warm-up.

    :param seed: seeds the minibatches and the decoded steps
    :param progress: called after every step with the step index and the loss terms
    :return: per step: the loss terms, the total, the DiLQR plans' convergence fraction
    """
    task = dl.tasks.get("pendulum")
    u_max, size = float(task.u_upper), model.encoder.size
    gen = torch.Generator().manual_seed(seed)
    phys = list(model.dilqr.dynamics.parameters()) if isinstance(model, VisualDiLQR) else []
    nets = [p for p in model.parameters() if all(p is not q for q in phys)]
    opts: list[torch.optim.Optimizer] = [torch.optim.Adam(nets, lr=lr)]
    if phys:
        opts.append(torch.optim.RMSprop(phys, lr=param_lr, alpha=0.5))
    hist = []
    for i in range(steps):
        idx = torch.randint(len(data), (batch,), generator=gen)
        k = _steps(gen, data.u.shape[1], decode_steps)
        pred = predict(model, data.frames(idx, size), data.u[idx], k, warm=True)
        terms = loss_terms(pred, data.future(idx, k, size), data.x[idx], data.u[idx], u_max)
        loss = (weights.pred * terms["pred"] + weights.state * terms["state"]
                + weights.imit * terms.get("imit", torch.zeros(())))
        for o in opts:
            o.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(nets, clip)
        for o in opts:
            o.step()
        if phys:
            model.dilqr.dynamics.project_()
        rec = {k_: float(v.detach()) for k_, v in terms.items()}
        rec.update(loss=float(loss.detach()), converged=float(pred.converged.double().mean()))
        hist.append(rec)
        if progress is not None:
            progress(i, rec)
    return hist


def pretrain(encoder: Encoder, decoder: Decoder, data: VisualData, *, steps: int, batch: int,
             seed: int, lr: float = 2e-3, decode_steps: int = 6,
             progress: Callable[[int, dict[str, float]], None] | None = None
             ) -> list[dict[str, float]]:
    """The warm-up both models share before end-to-end training: the encoder learns the
    current state (supervised) and the decoder learns to render the expert plan's true states
    at step 0 and ``decode_steps - 1`` random horizon steps (no dynamics involved yet).

    :return: per step the two loss terms and their sum
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    hist = []
    for i in range(steps):
        idx = torch.randint(len(data), (batch,), generator=gen)
        k = _steps(gen, data.u.shape[1], decode_steps)
        x = encoder(data.frames(idx, encoder.size))
        true = data.x[idx].to(x)
        state = (state_features(x) - state_features(true[:, 0])).square().mean()
        pred = F.binary_cross_entropy_with_logits(decoder(true[:, k]),
                                                  data.future(idx, k, encoder.size))
        loss = state + pred
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append({"state": float(state.detach()), "pred": float(pred.detach()),
                     "loss": float(loss.detach())})
        if progress is not None:
            progress(i, hist[-1])
    return hist


@torch.no_grad()
def evaluate(model: VisualDiLQR | LatentAR, data: VisualData, idx: Tensor,
             chunk: int = 64) -> dict[str, Tensor]:
    """Prediction error on samples ``idx (N,)`` from one image stack each, over the whole
    horizon, DiLQR planning from zero controls.

    :return: ``mse (N, T+1)``: the mean squared pixel error of each predicted frame
        (sigmoid of the logits) against the true one; ``state_err (N,)``: the encoded state's
        angle error (rad); ``vel_err (N,)``: its ``|thdot|`` error; ``u_err (N,)``: RMS of
        the planned controls against the expert's (DiLQR; NaN for the baseline);
        ``converged (N,)``
    """
    size = model.encoder.size
    out: dict[str, list[Tensor]] = {"mse": [], "state_err": [], "vel_err": [], "u_err": [],
                                    "converged": []}
    for i in range(0, idx.numel(), chunk):
        j = idx[i:i + chunk]
        pred = predict(model, data.frames(j, size), data.u[j])
        true = data.future(j, torch.arange(data.x.shape[1]), size)
        out["mse"].append((torch.sigmoid(pred.logits) - true).square().mean((-1, -2)))
        xt = data.x[j, 0].to(pred.x)
        d = torch.atan2(pred.x[:, 0, 1], pred.x[:, 0, 0]) - torch.atan2(xt[:, 1], xt[:, 0])
        out["state_err"].append(torch.atan2(d.sin(), d.cos()).abs())
        out["vel_err"].append((pred.x[:, 0, 2] - xt[:, 2]).abs())
        u_err = (torch.full((j.numel(),), float("nan")) if pred.u is None else
                 (pred.u - data.u[j].to(pred.u)).square().mean((1, 2)).sqrt())
        out["u_err"].append(u_err)
        out["converged"].append(pred.converged)
    return {k: torch.cat(v) for k, v in out.items()}


@torch.no_grad()
def closed_loop(model: VisualDiLQR, starts: Tensor, steps: int | None = None,
                seed: int = 0) -> dict[str, object]:
    """Receding-horizon control from pixels: each env of ``dilqr_rl/Pendulum-v0`` (wrapped in
    :class:`dilqr_rl.envs.PixelObservation`) starts at a row of ``starts (E, 3)``; every step
    the image stacks of all envs are encoded, one batched DiLQR solve (warm-started with the
    previous plan shifted) plans from the encoded states, and each env applies its plan's
    first control. Success is the task's rule on the final true state.

    :param steps: episode length (default the task's ``episode_steps``)
    :return: ``success`` (E bools), ``final`` states, ``wall_s``, ``s_per_step``, the mean
        error of the encoded angle (``angle_err_rad``) and velocity (``vel_err``) along the
        episodes, and the true ``states`` and encoded ``estimates`` (``(steps, E, 3)`` lists)
    """
    import gymnasium as gym

    from dilqr_rl.envs import PixelObservation

    task = dl.tasks.get("pendulum")
    steps = task.episode_steps if steps is None else steps
    envs = [PixelObservation(gym.make(task.env_id, max_episode_steps=steps),
                             size=model.encoder.size, frames=model.encoder.frames)
            for _ in range(starts.shape[0])]
    obs = [e.reset(seed=seed + i, options={"state": s.numpy()})[0]
           for i, (e, s) in enumerate(zip(envs, starts, strict=True))]
    infos: list[dict] = [{} for _ in envs]
    model.dilqr.reset()
    est, true = [], []
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dl.UnconvergedWarning)  # capped replans: expected
        for _ in range(steps):
            x0 = model.encoder(torch.as_tensor(np.stack(obs)))
            est.append(x0.double())
            true.append(torch.as_tensor(np.stack([e.unwrapped.state for e in envs])))
            u = model.dilqr.act(x0.double())
            for i, e in enumerate(envs):
                obs[i], _, _, _, infos[i] = e.step(e.unwrapped.control_to_action(u[i]))
    wall = time.perf_counter() - t0
    X, Xh = torch.stack(true), torch.stack(est)  # (steps, E, 3)
    d = torch.atan2(Xh[..., 1], Xh[..., 0]) - torch.atan2(X[..., 1], X[..., 0])
    final = np.stack([e.unwrapped.state for e in envs])
    ok = [bool(task.success(x, info)) for x, info in zip(final, infos, strict=True)]
    for e in envs:
        e.close()
    return {"success": ok, "final": final.tolist(), "wall_s": wall, "s_per_step": wall / steps,
            "angle_err_rad": float(torch.atan2(d.sin(), d.cos()).abs().mean()),
            "vel_err": float((Xh[..., 2] - X[..., 2]).abs().mean()),
            "states": X.tolist(), "estimates": Xh.tolist()}
