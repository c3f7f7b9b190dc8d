"""Imitation on the rocket: do the ``dilqr.dx`` and ``dilqr.cost`` learners recover the
model and the cost from expert plans? (docs/rocket.md, "Imitation")

Both learners train with ``agents.training.train`` (``dilqr-rl imitate``'s settings: 5
expert plans, ``|u| <= 100``, RMSprop ``lr 0.1`` decaying to ``0.002``) on the same expert
data, and are scored at the start (the task's initial guess) and the end on what the expert's
plans can determine:

- ``dx``: the raw parameters ``(Jx, Jy, Jz, m, l)`` and the identifiable combinations ``m``,
  ``J/l`` (scaling ``J`` and ``l`` together leaves the dynamics unchanged);
- ``cost``: the plans do not change when every weight is scaled by one factor, so the
  weights are compared after the best common scale (least squares in ``log w``), per block
  ``r, v, q, w, T``; the weight and goal of ``w_x`` are left out (no thrust makes a roll
  torque and the true ``Jy = Jz`` couples no rate into it: ``w_x`` is the same in every
  plan); the goal per block as an absolute error.

``--sensitivity`` instead measures how much the expert plans change when a block of the true
weights is scaled (the imitation loss of the re-solved plans against the expert's): what the
plans can tell apart at all.

Usage::

    python benchmarks/rocket_imitation.py [--quick] [--epochs-dx 220] [--epochs-cost 220]
    python benchmarks/rocket_imitation.py --sensitivity

Writes ``benchmarks/results/rocket_imitation.json`` and ``.png``, or
``rocket_imitation_sensitivity.json`` (1 thread).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from general_models_report import code_version, finite_json  # noqa: E402

from agents.data import demo_controller, make_expert_data  # noqa: E402
from agents.imitation_args import Args  # noqa: E402
from agents.learners import make_learner  # noqa: E402
from agents.training import train  # noqa: E402
from dilqr_rl import tasks  # noqa: E402

BLOCKS = {"r": [0, 1, 2], "v": [3, 4, 5], "q": [6, 7, 8, 9], "w": [11, 12], "T": [13, 14, 15]}
#: the weight and goal of w_x (index 10): no plan depends on them
UNSEEN = [10]


def dx_errors(theta: list[float]) -> dict[str, float]:
    """Relative errors of the raw parameters and of the identifiable combinations."""
    task = tasks.get("rocket")
    th, ref = torch.tensor(theta, dtype=torch.float64), task.theta()
    out = {k: abs(float(th[i] / ref[i]) - 1) for i, k in enumerate(task.param_names)}
    got, want = task.combinations(th), task.combinations(ref)
    out.update({f"ident {k}": abs(float(got[k] / want[k]) - 1) for k in want})
    return out


def cost_errors(learned: list[float], truth: list[float]) -> dict[str, float]:
    """Scale-free weight errors (``max |s w_hat / w - 1|`` per block, ``s`` the least-squares
    common scale in ``log w``) and goal errors (``max |g_hat - g|`` per block)."""
    n = len(truth) // 2
    w, g = torch.tensor(learned[:n]), torch.tensor(learned[n:])
    wt, gt = torch.tensor(truth[:n]), torch.tensor(truth[n:])
    seen = [i for i in range(n) if i not in UNSEEN]
    s = math.exp(float((wt[seen].log() - w[seen].log()).mean()))
    out = {"scale": s}
    for k, idx in BLOCKS.items():
        out[f"w_{k}"] = float((s * w[idx] / wt[idx] - 1).abs().max())
        out[f"goal_{k}"] = float((g[idx] - gt[idx]).abs().max())
    return out


#: (name, weight indices, factor) of the sensitivity check
PERTURB = [("r x1.1", [0, 1, 2], 1.1), ("v x1.1", [3, 4, 5], 1.1), ("T x1.1", [13, 14, 15], 1.1),
           ("wy, wz x1.3", [11, 12], 1.3), ("wx x2", [10], 2.0), ("q0 x0.5", [6], 0.5),
           ("q1 x2", [7], 2.0), ("q2, q3 x0.6", [8, 9], 0.6), ("q x0.6", [6, 7, 8, 9], 0.6)]


def sensitivity(data, n_train: int) -> dict[str, float]:
    """Imitation loss of the plans re-solved (warm-started from the expert's) with one block
    of the true weights scaled, against the expert's plans."""
    x, u = data.split("train", n_train)
    ctrl = demo_controller("rocket", 100.0, max_iter=500, tol=1e-10)
    out = {}
    for name, idx, f in [("truth", [], 1.0), *PERTURB]:
        w = data.weights.clone()
        w[idx] *= f
        with torch.no_grad():
            sol = ctrl(x[:, 0], u_init=u.clone(), weights=2 * w, goal=data.goal,
                       terminal_weights=2 * w[:13])
        out[name] = float((sol.u - u).pow(2).mean())
        print(f"  {name:>12}: imitation loss {out[name]:.2e}", flush=True)
    return out


def initial_metrics(args: Args, data) -> dict:
    """The initial guess's parameters and imitation loss on the train and test splits."""
    learner = make_learner(args)
    out = {"params": learner.learned().detach().tolist()}
    with torch.no_grad():
        for split in ("train", "test"):
            x, u = data.split(split, args.n_train if split == "train" else None)
            out[f"{split}_im"] = float((learner.predict(x[:, 0], None) - u).pow(2).mean())
    return out


def run(mode: str, epochs: int, data, a: argparse.Namespace) -> dict:
    args = Args(env="rocket", learner=f"dilqr.{mode}", n_train=a.n_train, epochs=epochs,
                lr=a.lr, lr_final=a.lr_final, u_bound=100.0, eval_every=max(epochs // 20, 1),
                seed=a.seed, progress=True)
    t0 = time.perf_counter()
    start = initial_metrics(args, data)
    rec = train(args, data)
    truth, final = rec["truth"], rec["final"]
    errs = (lambda p: dx_errors(p)) if mode == "dx" else (lambda p: cost_errors(p, truth))
    res = dict(mode=mode, epochs=epochs, steps=final["steps"],
               time_per_step_s=final["train_time_per_step"], wall_s=time.perf_counter() - t0,
               start=dict(**start, errors=errs(start["params"])),
               end=dict(params=final["params"], train_im=final["train_im"],
                        test_im=final["test_im"], errors=errs(final["params"])),
               truth=truth, diverged=final["diverged"], unconverged=final["unconverged"],
               history=[dict(epoch=h["epoch"], train_im=h["train_im"], test_im=h["test_im"],
                             errors=errs(h["params"])) for h in rec["history"]])
    print(f"\n{mode}: {res['steps']} steps, {res['time_per_step_s']:.2f} s/step; imitation loss "
          f"train {start['train_im']:.3g} -> {final['train_im']:.3g}, test "
          f"{start['test_im']:.3g} -> {final['test_im']:.3g}")
    for k in res["start"]["errors"]:
        print(f"  {k:>10}: {res['start']['errors'][k]:9.4f} -> {res['end']['errors'][k]:9.4f}")
    return res


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in results:
        ep = [h["epoch"] + 1 for h in r["history"]]
        axes[0].semilogy(ep, [h["test_im"] for h in r["history"]], label=f"dilqr.{r['mode']}")
        ax = axes[1] if r["mode"] == "dx" else axes[2]
        # leave out what never moved (the goal when only the weights are learned)
        keys = [k for k in r["history"][0]["errors"] if k != "scale"
                and any(h["errors"][k] != r["history"][0]["errors"][k] for h in r["history"])]
        if r["mode"] == "dx":
            keys = [k for k in keys if k.startswith("ident")] + ["Jx", "l"]
        for k in keys:
            ax.semilogy(ep, [max(h["errors"][k], 1e-6) for h in r["history"]], label=k,
                        ls="-" if ("ident" in k or k.startswith("w_")) else "--")
        ax.legend(fontsize=7, ncol=2)
        ax.set_xlabel("epoch")
    axes[0].set(title="test imitation loss", xlabel="epoch")
    axes[0].legend()
    axes[1].set_title("dx: relative error (solid: identifiable)")
    axes[2].set_title("cost: weight rel. err, common scale (goal: abs., dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20 epochs each")
    p.add_argument("--epochs-dx", type=int, default=220)
    p.add_argument("--epochs-cost", type=int, default=220)
    p.add_argument("--n-train", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--lr-final", type=float, default=0.002)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", nargs="+", default=["dx", "cost"], choices=["dx", "cost"])
    p.add_argument("--sensitivity", action="store_true",
                   help="only the plans' sensitivity to each block of weights")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    load0 = os.getloadavg()
    data = make_expert_data("rocket", a.n_train, 5, 5, seed=a.seed, u_bound=100.0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.sensitivity:
        res = dict(meta=dict(date=datetime.datetime.now().isoformat(timespec="seconds"),
                             n_train=a.n_train, seed=a.seed, **code_version()),
                   imitation_loss=sensitivity(data, a.n_train))
        (out / "rocket_imitation_sensitivity.json").write_text(json.dumps(res, indent=1))
        return
    epochs = {"dx": 20 if a.quick else a.epochs_dx, "cost": 20 if a.quick else a.epochs_cost}
    results = [run(m, epochs[m], data, a) for m in a.modes]
    meta = dict(date=datetime.datetime.now().isoformat(timespec="seconds"),
                torch=torch.__version__, threads=1, args=vars(a), load_average_at_start=load0,
                load_average_at_end=os.getloadavg(), **code_version())
    (out / "rocket_imitation.json").write_text(json.dumps(
        finite_json(dict(meta=meta, results=results)), indent=1))
    plot(results, out / "rocket_imitation.png")
    print(f"wrote {out / 'rocket_imitation.json'} and .png")


if __name__ == "__main__":
    main()
