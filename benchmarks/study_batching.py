"""Speed-up of training S imitation runs as one batched solve (``agents/batched.py``) over S
separate runs, S in {1, 5, 20}; writes ``benchmarks/results/study_batching.{json,png}``.

    python benchmarks/study_batching.py                 # pendulum, cart-pole; dx, cost; 3 epochs
    python benchmarks/study_batching.py --epochs 10 --sizes 1,5,20,50

The runs are the study's (seeds 0..S-1, each with its own expert data, training set 50,
batch 32, evaluation every epoch, float64, 1 thread). Both ways run the same epochs; the JSON
also holds the largest difference between the batched and the separate runs' final
parameters (they must agree to rounding). The speed-up is the ratio of process CPU times
(the machine may be shared: CPU time is what the runs cost; the wall-time ratio is stored
too).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from dilqr_rl.agents.batched import train_many
from dilqr_rl.agents.data import make_expert_data
from dilqr_rl.agents.imitation_args import Args
from dilqr_rl.agents.plotting import pyplot, save_figure
from dilqr_rl.agents.training import train


def _time(env: str, learner: str, S: int, epochs: int, n_train: int) -> dict:
    args = [Args(env=env, learner=learner, n_train=n_train, epochs=epochs, seed=s,
                 eval_every=1, progress=False) for s in range(S)]
    data = [make_expert_data(env, n_train, 10, 10, seed=s) for s in range(S)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0, c0 = time.perf_counter(), time.process_time()
        alone = [train(a, d) for a, d in zip(args, data, strict=True)]
        t_alone, c_alone = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        together = train_many(args, data)
        t_together, c_together = time.perf_counter() - t0, time.process_time() - c0
    diff = max(float(np.abs(np.subtract(a["final"]["params"], b["final"]["params"])).max())
               for a, b in zip(alone, together, strict=True))
    return dict(env=env, learner=learner, S=S, separate_cpu_s=c_alone, batched_cpu_s=c_together,
                speedup=c_alone / c_together, separate_wall_s=t_alone, batched_wall_s=t_together,
                speedup_wall=t_alone / t_together, max_param_diff=diff)


def _plot(rows: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for env, learner in dict.fromkeys((r["env"], r["learner"]) for r in rows):
        rs = [r for r in rows if r["env"] == env and r["learner"] == learner]
        ax.plot([r["S"] for r in rs], [r["speedup"] for r in rs], "o-", label=f"{env} {learner}")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(4.0, color="gray", ls=":", lw=0.8, label="goal at S = 5")
    ax.set(xscale="log", xlabel="S (runs)", ylabel="speed-up (CPU time, S separate / batched)",
           title="S imitation runs as one batched solve (1 thread)")
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", default="pendulum,cartpole")
    p.add_argument("--learners", default="dilqr.dx,dilqr.cost")
    p.add_argument("--sizes", default="1,5,20", help="the S values")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-train", type=int, default=50)
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for env in a.envs.split(","):
        for learner in a.learners.split(","):
            _time(env, learner, 2, 1, 4)  # warm-up (first calls pay one-time setup)
            for S in (int(s) for s in a.sizes.split(",")):
                r = _time(env, learner, S, a.epochs, a.n_train)
                rows.append(r)
                print(f"{env} {learner} S={S}: CPU time separate {r['separate_cpu_s']:.1f} s, "
                      f"batched {r['batched_cpu_s']:.1f} s, speed-up {r['speedup']:.2f}x (wall "
                      f"{r['speedup_wall']:.2f}x), max |param diff| {r['max_param_diff']:.1e}",
                      flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    res = dict(command="python benchmarks/study_batching.py " + " ".join(argv), threads=1,
               epochs=a.epochs, n_train=a.n_train, rows=rows)
    (out / "study_batching.json").write_text(json.dumps(res, indent=1))
    print(f"wrote {out / 'study_batching.json'} and {_plot(rows, out / 'study_batching.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
