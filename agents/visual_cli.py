"""``dilqr-rl visual``: the pendulum from pixels with DiLQR inside the network (paper
section 5.4), against an autoregressive latent baseline.

:func:`run_visual` makes the expert data once (:mod:`.visual_data`), then for every seed trains
the DiLQR model and the baseline with the same data, budget and seed (:mod:`.visual_train`),
measures their image prediction error over the horizon on held-out episodes, and runs the
DiLQR model in closed loop from pixels from hanging starts. :func:`main_visual` prints a table
and writes JSON, the error plot and a strip of true against predicted frames.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import dilqr_rl as dl

from .cliargs import dataclass_parser, parse
from .fields import arg, check_fields
from .visual import LatentAR, VisualDiLQR
from .visual_data import VisualData, hanging_starts, make_visual_data
from .visual_plots import plot_errors, plot_strip
from .visual_train import LossWeights, closed_loop, evaluate, predict, pretrain, train_model

__all__ = ["VisualArgs", "main_visual", "run_visual", "write_outputs"]


@dataclass
class VisualArgs:
    """Settings of ``dilqr-rl visual`` (defaults: the quick run; the benchmark's are larger)."""

    seeds: int = arg(1, "training seeds (each trains both models)")
    seed: int = arg(0, "the first training seed")
    data_seed: int = arg(1000, "seed of the expert data (the same for every training seed)")
    episodes: int = arg(8, "expert closed-loop episodes (training and test)")
    test_episodes: int = arg(2, "of which held out for the prediction error")
    episode_steps: int = arg(40, "steps per expert episode (each step is a sample)")
    noise: float = arg(0.5, "std of the noise on the expert's applied torque")
    horizon: int = arg(20, "planning / prediction horizon T")
    size: int = arg(32, "image side (pixels, a power of two)")
    frames: int = arg(4, "stacked frames per observation")
    width: int = arg(8, "channels of the first convolution")
    hidden: int = arg(64, "width of the fully connected layers")
    pretrain_steps: int = arg(60, "warm-up steps of the encoder and decoder both models share")
    steps: int = arg(30, "end-to-end training steps per model")
    batch: int = arg(32, "samples per training step")
    decode_steps: int = arg(6, "horizon steps decoded per training batch (step 0 + random)")
    lr: float = arg(2e-3, "Adam learning rate of the networks")
    param_lr: float = arg(0.03, "RMSprop learning rate of the physical parameters")
    w_imit: float = arg(1.0, "weight of the imitation loss (DiLQR)")
    w_pred: float = arg(1.0, "weight of the prediction loss")
    w_state: float = arg(10.0, "weight of the encoder's state supervision (both models; at 1 "
                         "the end-to-end gradient of a still wrong model drags the encoder off)")
    max_iter: int = arg(20, "iLQR iterations per solve")
    init_params: str = arg("g=12,m=1.2,l=0.8", "the DiLQR model's initial (wrong) physical "
                           "parameters, learned; 'learn_init': DiffMPC's guess (15, 3, 0.5)")
    eval_samples: int = arg(64, "held-out samples scored for the prediction error")
    closed_loop: int = arg(4, "closed-loop episodes from pixels (hanging, perturbed starts)")
    closed_loop_steps: int | None = arg(100, "their length (none: the task's, 200)")
    out: str = arg("runs/visual", "output folder (JSON, PNG)")
    progress: bool = arg(True, "progress bar")


def _check(a: VisualArgs) -> None:
    check_fields(a, {"seeds": 1, "seed": 0, "data_seed": 0, "episodes": 2, "test_episodes": 1,
                     "episode_steps": 1, "horizon": 1, "size": 8, "frames": 1, "width": 1,
                     "hidden": 1, "pretrain_steps": 0, "steps": 0, "batch": 1,
                     "decode_steps": 1, "max_iter": 1, "eval_samples": 1, "closed_loop": 0},
                 positive=("lr", "param_lr"), nonneg=("noise", "w_imit", "w_pred", "w_state"))
    n = a.closed_loop_steps
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"--closed-loop-steps must be an integer >= 1 or none, got {n!r}")
    if a.test_episodes >= a.episodes:
        raise ValueError(f"--test-episodes must be below --episodes ({a.episodes}), got "
                         f"{a.test_episodes}")
    _init_params(a)
    if a.size & (a.size - 1):
        raise ValueError(f"--size must be a power of two, got {a.size}")


def _init_params(a: VisualArgs) -> dict[str, float] | None:
    """``--init-params`` as a dict (``None``: the task's ``learn_init``); ``ValueError`` naming
    the flag if it is malformed or names a parameter the pendulum does not have."""
    from .rl_args import parse_kv

    if a.init_params == "learn_init":
        return None
    try:
        kv = parse_kv(a.init_params)
    except ValueError as e:
        raise ValueError(f"--init-params: {e}") from None
    names = dl.tasks.get("pendulum").param_names
    if set(kv) - set(names) or any(v <= 0 for v in kv.values()):
        raise ValueError(f"--init-params must set some of {names} to positive values, got "
                         f"{a.init_params!r}")
    return kv


def _split(data: VisualData, n_test: int) -> tuple[VisualData, VisualData]:
    """Train / test by episode; the test episodes spread over the hanging and random ones."""
    E = int(data.episode.max()) + 1
    test_eps = torch.linspace(0, E - 1, n_test).round().long()
    test = torch.isin(data.episode, test_eps)
    return data.subset(~test), data.subset(test)


def _models(a: VisualArgs, seed: int, train: VisualData, bar: Any
            ) -> dict[str, VisualDiLQR | LatentAR]:
    """Both models with the same encoder and decoder, warmed up once (:func:`pretrain`)."""
    sizes = dict(size=a.size, frames=a.frames, width=a.width, hidden=a.hidden)
    torch.manual_seed(seed)
    models = {"dilqr": VisualDiLQR(a.horizon, _init_params(a), a.max_iter, **sizes),
              "baseline": LatentAR(a.horizon, **sizes)}
    enc, dec = models["dilqr"].encoder, models["dilqr"].decoder
    pretrain(enc, dec, train, steps=a.pretrain_steps, batch=a.batch, seed=seed, lr=a.lr,
             decode_steps=a.decode_steps, progress=_ticker(bar, seed, "warm-up"))
    models["baseline"].encoder.load_state_dict(enc.state_dict())
    models["baseline"].decoder.load_state_dict(dec.state_dict())
    return models


def _ticker(bar: Any, seed: int, stage: str) -> Any:
    def tick(i: int, r: dict[str, float]) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(seed=seed, stage=stage, loss=f"{r['loss']:.3f}")

    return tick


def _score(ev: dict[str, torch.Tensor]) -> dict[str, Any]:
    mse = ev["mse"].double()
    return {"mse_per_step": mse.mean(0).tolist(), "mse_std_samples": mse.std(0).tolist(),
            "state_angle_err_rad": float(ev["state_err"].mean()),
            "state_vel_err": float(ev["vel_err"].mean()),
            "u_rms_err": float(ev["u_err"].double().mean()),
            "converged": float(ev["converged"].double().mean())}


def _one_seed(a: VisualArgs, seed: int, train: VisualData, test: VisualData, starts: torch.Tensor,
              bar: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Both models for one seed: training, prediction error, DiLQR's closed loop."""
    task = dl.tasks.get("pendulum")
    w = LossWeights(a.w_imit, a.w_pred, a.w_state)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(test), generator=gen)[: a.eval_samples]
    rec: dict[str, Any] = {"seed": seed}
    strip: dict[str, np.ndarray] = {}
    show = idx[test.x[idx, :, 2].abs().mean(1).argmax()]  # a sample that moves
    t0 = time.perf_counter()
    models = _models(a, seed, train, bar)
    rec["pretrain_wall_s"] = time.perf_counter() - t0
    for kind, model in models.items():
        t0 = time.perf_counter()
        hist = train_model(model, train, steps=a.steps, batch=a.batch, seed=seed, lr=a.lr,
                           param_lr=a.param_lr, decode_steps=a.decode_steps, weights=w,
                           progress=_ticker(bar, seed, kind))
        t1 = time.perf_counter()
        res = _score(evaluate(model, test, idx))
        res.update(train_wall_s=t1 - t0, eval_wall_s=time.perf_counter() - t1,
                   loss=[h["loss"] for h in hist], pred_loss=[h["pred"] for h in hist])
        with torch.no_grad():
            p = predict(model, test.frames(show[None], a.size), test.u[show[None]])
            strip[kind] = torch.sigmoid(p.logits[0]).numpy()
        if isinstance(model, VisualDiLQR):
            theta = model.dilqr.dynamics.theta().detach().double()
            res["params"] = dict(zip(task.param_names, theta.tolist(), strict=True))
            res["identifiable"] = {k: float(v) for k, v in task.combinations(theta).items()}
            res["closed_loop"] = closed_loop(model, starts, a.closed_loop_steps, seed) \
                if starts.shape[0] else {"success": [], "wall_s": 0.0}
        rec[kind] = res
    strip["true"] = test.future(show[None], torch.arange(a.horizon + 1), a.size)[0].numpy()
    cl = rec["dilqr"].pop("closed_loop")
    cl["rate"] = float(np.mean(cl["success"])) if cl["success"] else math.nan
    X = np.array(cl.pop("states", np.zeros((0, 0, 3))))
    cl.pop("estimates", None)
    cl["angles"] = np.round(np.arctan2(X[..., 1], X[..., 0]), 3).tolist()  # (steps, E)
    rec["closed_loop"] = cl
    return rec, strip


def run_visual(a: VisualArgs) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The whole experiment (see the module docstring). Returns the report (JSON-able) and
    the frames of the first seed's strip (``true``, ``dilqr``, ``baseline``: ``(T+1, S, S)``).
    """
    torch.set_num_threads(1)  # small batched solves and convolutions: one thread is fastest
    t0 = time.perf_counter()
    data = make_visual_data(a.episodes, a.episode_steps, a.horizon, a.frames, a.data_seed,
                            a.noise)
    train, test = _split(data, a.test_episodes)
    t_data = time.perf_counter() - t0
    starts = hanging_starts(torch.Generator().manual_seed(a.data_seed + 1), a.closed_loop)
    bar = None
    if a.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=a.seeds * (a.pretrain_steps + 2 * a.steps), desc="visual", unit="step")
    seeds, strip = [], {}
    for s in range(a.seed, a.seed + a.seeds):
        rec, frames = _one_seed(a, s, train, test, starts, bar)
        seeds.append(rec)
        strip = strip or frames
    if bar is not None:
        bar.close()
    summary: dict[str, Any] = {}
    for kind in ("dilqr", "baseline"):
        m = np.array([r[kind]["mse_per_step"] for r in seeds])
        summary[kind] = {"mse_mean": m.mean(0).tolist(), "mse_std": m.std(0).tolist(),
                         "train_wall_s": float(np.mean([r[kind]["train_wall_s"]
                                                        for r in seeds]))}
    rates = [r["closed_loop"]["rate"] for r in seeds]
    summary["closed_loop_rate_mean"] = float(np.mean(rates))
    summary["closed_loop_rate_std"] = float(np.std(rates))
    task = dl.tasks.get("pendulum")
    truth = {k: float(v) for k, v in task.combinations(task.theta()).items()}
    report = {"args": asdict(a), "threads": torch.get_num_threads(), "identifiable_truth": truth,
              "train_samples": len(train), "test_samples": len(test), "data_wall_s": t_data,
              "seeds": seeds, "summary": summary, "wall_s": time.perf_counter() - t0}
    return report, strip


def write_outputs(report: dict[str, Any], strip: dict[str, np.ndarray], stem: str | Path
                  ) -> list[Path]:
    """``stem.json``, ``stem.png`` (errors, closed loop) and ``stem_frames.png`` (strip)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out = [stem.with_suffix(".json"), plot_errors(report, stem.with_suffix(".png"))]
    T = len(strip["true"]) - 1
    cols = list(range(0, T + 1, max(1, T // 10)))
    rows = {"true": strip["true"][cols], "DiLQR": strip["dilqr"][cols],
            "autoregressive": strip["baseline"][cols]}
    out.append(plot_strip(rows, cols, stem.parent / f"{stem.name}_frames.png",
                          "one image stack in, the horizon's frames out (held-out sample)"))
    return out


def print_summary(report: dict[str, Any]) -> None:
    """The prediction error at a few horizon steps and the closed loop, per model."""
    s = report["summary"]
    T = len(s["dilqr"]["mse_mean"]) - 1
    show = sorted({0, 1, T // 4, T // 2, T})
    print("pixel MSE of the predicted frame, mean +- std over seeds:")
    print(f"{'step':>6} " + " ".join(f"{k:>19}" for k in ("DiLQR", "autoregressive")))
    for k in show:
        print(f"{k:>6} " + " ".join(f"{s[m]['mse_mean'][k]:>10.5f} +- {s[m]['mse_std'][k]:.5f}"
                                    for m in ("dilqr", "baseline")))
    for r in report["seeds"]:
        cl, d = r["closed_loop"], r["dilqr"]
        print(f"seed {r['seed']}: closed loop {sum(cl['success'])}/{len(cl['success'])}, "
              f"encoded angle / velocity error along it {cl.get('angle_err_rad', math.nan):.3f}"
              f" rad / {cl.get('vel_err', math.nan):.2f} rad/s; learned " + ", ".join(
                  f"{k} {v:.3g}" for k, v in d["identifiable"].items()))
    print(f"closed loop from pixels: {100 * s['closed_loop_rate_mean']:.0f} % +- "
          f"{100 * s['closed_loop_rate_std']:.0f} % success; train "
          f"{s['dilqr']['train_wall_s']:.0f} s (DiLQR) / {s['baseline']['train_wall_s']:.0f} s "
          f"(baseline) per seed; total {report['wall_s']:.0f} s, 1 thread")


def main_visual(argv: list[str]) -> int:
    """``dilqr-rl visual``: train both models, print the table, write JSON + PNGs."""
    p = dataclass_parser(VisualArgs, "dilqr-rl visual", "The pendulum from pixels (DiLQR paper "
                         "section 5.4): encoder -> DiLQR -> decoder trained end to end on "
                         "imitation and image prediction, against an autoregressive latent "
                         "baseline; then closed-loop control from pixels.")
    a = parse(VisualArgs, argv, p, check=_check)
    report, strip = run_visual(a)
    print_summary(report)
    paths = write_outputs(report, strip, Path(a.out) / "visual_pendulum")
    print("wrote " + ", ".join(str(x) for x in paths), file=sys.stdout)
    return 0
