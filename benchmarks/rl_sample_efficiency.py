"""Sample efficiency: PPO with a DiLQR actor vs PPO and SAC with SB3's default MLP policies.

Methods: ``dilqr_ppo`` (PPO's loss alone trains the model's physical parameters),
``dilqr_ppo_sysid`` (the same, plus :class:`dilqr_rl.sb3.SystemIdCallback`, which every 128 env
steps fits the physical parameters to the one-step transitions collected so far), ``mlp_ppo``
and ``mlp_sac`` (SB3's ``MlpPolicy``, rl-zoo's Pendulum-v1 hyperparameters).

On ``dilqr_rl/Pendulum-v0`` and ``dilqr_rl/MujocoPendulum-v0`` the controller's model starts
30-50 % off the true parameters (``g, m, l = 14, 1.4, 0.6`` vs ``10, 1, 1``). The MLP baselines
get 4x the DiLQR actor's env-step budget (``--mlp-budget``), so that "how many steps do they
need" is measured rather than censored; every ``--eval-freq`` steps a deterministic evaluation
on fixed seeds.
Reported per env:

- the true-model MPC return ``R*`` (the same controller, horizon and iteration cap, with the
  true parameters) and the wrong-model MPC return (the DiLQR actor before training);
- per method the mean +- std over seeds of the evaluation curves and the first env step at
  which the seed-mean curve is within 10 % of ``R*`` (``R >= R* - 0.1 |R*|``);
- the ratio of the DiLQR actor's steps to the best MLP baseline's (target <= 1/10);
- the DiLQR model's parameter error ``|theta - theta_true| / |theta_true|`` before and after;
- wall-clock per env step of training (evaluations excluded).

Usage (default: 3 seeds x 2 envs; DiLQR 2048 steps, MLP baselines 8192 steps, evaluation
every 128 steps)::

    python benchmarks/rl_sample_efficiency.py --workers 2
    python benchmarks/rl_sample_efficiency.py --budget 8192 --mlp-budget 100000   # larger

Writes ``benchmarks/results/rl_sample_efficiency.{json,png}``; run directories (TensorBoard,
checkpoints) go to ``runs/rl_sample_efficiency/``. One torch thread per worker.

Cost: the DiLQR actor's env step (rollout solve, horizon 20, 10 iterations) and SAC's updates
dominate; the JSON records the wall time (``wall_s``) and the per-step training time.

DiLQR actor settings: PPO with ``n_steps=512``, 10 epochs, batch 256, lr 1e-3 for the critic
and ``log_std`` and ``controller_lr_scale=100`` (lr 0.1) for the physical parameters, which
are O(1-10): with the scale 10 of the first version, 1024 steps moved them by < 1 %.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from typing import Any

import numpy as np

from dilqr_rl import tasks

ENVS = ("dilqr_rl/Pendulum-v0", "dilqr_rl/MujocoPendulum-v0")
PENDULUM = tasks.get("pendulum")  # the task of both envs
TRUE = dict(PENDULUM.params)
WRONG = {"g": 14.0, "m": 1.4, "l": 0.6}  # +40 %, +40 %, -40 % of TRUE
METHODS = ("dilqr_ppo_sysid", "dilqr_ppo", "mlp_ppo", "mlp_sac")
HERE = os.path.dirname(os.path.abspath(__file__))


def run_args(method: str, env: str, seed: int, opt: argparse.Namespace) -> dict[str, Any]:
    """``TrainArgs`` keywords of one run."""
    budget = opt.budget if method.startswith("dilqr") else opt.mlp_budget
    common = {"env": env, "seed": seed, "total_timesteps": budget,
              "eval_freq": opt.eval_freq, "eval_episodes": opt.eval_episodes,
              "checkpoint_freq": budget, "out_dir": opt.work_dir, "progress_bar": False,
              "run_name": f"{method}_{env.split('/')[-1]}_s{seed}", "resume": False,
              "horizon": opt.horizon, "max_iter": opt.max_iter}
    if method.startswith("dilqr_ppo"):
        return dict(common, algo="ppo", policy="dilqr", learn="dynamics",
                    model_params=",".join(f"{k}={v}" for k, v in WRONG.items()),
                    n_steps=512, batch_size=256, n_epochs=10, learning_rate=1e-3,
                    controller_lr_scale=100.0, gamma=0.9,
                    sysid_every=128 if method.endswith("sysid") else 0)
    if method == "mlp_ppo":  # rl-zoo's Pendulum-v1 settings, one env
        return dict(common, algo="ppo", policy="mlp", n_steps=1024, batch_size=64,
                    n_epochs=10, learning_rate=1e-3, gamma=0.9)
    if method == "mlp_sac":  # rl-zoo's Pendulum-v1 settings
        return dict(common, algo="sac", policy="mlp", learning_rate=1e-3, gamma=0.99,
                    batch_size=256, learning_starts=min(500, opt.budget // 4))
    raise ValueError(method)


def _one(job: tuple[str, str, int, dict[str, Any]]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from dilqr_rl.agents.rl import TrainArgs, train

    method, env, seed, kw, reuse = job
    cache = os.path.join(kw["out_dir"], kw["run_name"], "result.json")
    if reuse and os.path.exists(cache):
        with open(cache) as f:
            res = json.load(f)
        if res.get("kw") == kw:
            return res
    summary = train(TrainArgs(**kw))
    with open(os.path.join(summary["run_dir"], "evaluations.jsonl")) as f:
        recs = sorted((json.loads(line) for line in f if line.strip()),
                      key=lambda r: r["timesteps"])
    eval_s = sum(r["eval_s"] for r in recs)
    res = {"method": method, "env": env, "seed": seed, "summary": summary, "kw": kw,
           "timesteps": [r["timesteps"] for r in recs], "mean": [r["mean"] for r in recs],
           "params": [r.get("params") for r in recs],
           "train_s_per_step": max(summary["wall_s"] - eval_s, 0.0) / kw["total_timesteps"]}
    with open(cache, "w") as f:
        json.dump(res, f)
    return res


def _mpc(job: tuple[str, dict[str, float], argparse.Namespace]) -> dict[str, Any]:
    """Deterministic return of the plain MPC controller with the given model parameters."""
    import gymnasium as gym
    import torch

    torch.set_num_threads(1)
    from dilqr_rl.agents.rl import parse_kv  # noqa: F401  (registers envs via dilqr_rl)
    from dilqr_rl.sb3 import DiLQRActorCriticPolicy, controller_spec

    env_id, params, opt = job
    env = gym.make(env_id)
    spec = controller_spec(env_id, params, horizon=opt.horizon, max_iter=opt.max_iter)
    policy = DiLQRActorCriticPolicy(env.observation_space, env.action_space, lambda _: 1e-3,
                                    controller=spec)
    policy.set_training_mode(False)
    rets, per_seed, t0, n = [], {}, time.perf_counter(), 0
    for seed in opt.seeds:
        # the same evaluation seeds as agents.rl.evaluate (10_000 + seed + episode)
        for ep in range(opt.eval_episodes):
            obs, _ = env.reset(seed=10_000 + seed + ep)
            policy.actor.reset()
            done, ret = False, 0.0
            while not done:
                a, _ = policy.predict(obs, deterministic=True)
                obs, r, term, trunc, _ = env.step(a)
                ret += float(r)
                n += 1
                done = term or trunc
            rets.append(ret)
        per_seed[str(seed)] = float(np.mean(rets[-opt.eval_episodes:]))
    return {"env": env_id, "params": params, "mean": float(np.mean(rets)),
            "std": float(np.std(rets)), "per_seed": per_seed,
            "s_per_step": (time.perf_counter() - t0) / n}


def param_errors(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Relative error of the model's parameters at the first and last evaluation, mean over
    seeds: of ``(g, m, l)`` and of what one-step transitions identify, ``(g / l, m l^2)`` (the
    pendulum's dynamics depend on ``(g, m, l)`` only through these two)."""
    def rel(v: np.ndarray, t: np.ndarray) -> float:
        return float(np.linalg.norm(v - t) / np.linalg.norm(t))

    def ident(p: dict[str, float]) -> np.ndarray:
        return np.array([p["g"] / p["l"], p["m"] * p["l"] ** 2])

    th = np.array([TRUE[k] for k in WRONG])
    out: dict[str, Any] = {"params_end": [r["params"][-1] for r in rs]}
    for when, i in (("start", 0), ("end", -1)):
        out[f"param_error_{when}"] = float(np.mean(
            [rel(np.array([r["params"][i][k] for k in WRONG]), th) for r in rs]))
        out[f"identifiable_error_{when}"] = float(np.mean(
            [rel(ident(r["params"][i]), ident(TRUE)) for r in rs]))
    return out


def target(d: int | None, best_mlp: int | None, mlp_budget: int) -> dict[str, Any]:
    """The issue's target for a DiLQR method that reached the threshold at step ``d``: ``d <=
    best_mlp / 10``. ``target_holds`` is None when undetermined: no MLP baseline reached the
    threshold within its budget (so it needs more than ``mlp_budget`` steps) and ``d >
    mlp_budget / 10``."""
    out: dict[str, Any] = {"ratio": d / best_mlp if (d is not None and best_mlp) else None}
    if d is None:
        out["target_holds"] = False
    elif best_mlp is not None:
        out["target_holds"] = bool(d <= best_mlp / 10)
    else:
        out["target_holds"] = True if d <= mlp_budget / 10 else None
        out["ratio_upper_bound"] = d / mlp_budget
    return out


def within_10pct(R: float) -> float:
    """The lowest return within 10 % of the reference return ``R``."""
    return R - 0.1 * abs(R)


def first_reach(t: list[int], curve: np.ndarray, threshold: float) -> int | None:
    for ti, v in zip(t, curve, strict=True):
        if v >= threshold:
            return int(ti)
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget", type=int, default=2048, help="env steps per DiLQR run")
    p.add_argument("--mlp-budget", type=int, default=8192,
                   help="env steps per MLP-baseline run (larger, to see where they get)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--envs", nargs="+", default=list(ENVS))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--eval-freq", type=int, default=128)
    p.add_argument("--eval-episodes", type=int, default=2)
    p.add_argument("--horizon", type=int, default=PENDULUM.horizon)
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--replot", action="store_true",
                   help="only redraw the PNG from the JSON of a finished run")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the result.json of finished runs with the same arguments "
                        "(re-aggregate without retraining)")
    p.add_argument("--work-dir", default=os.path.join("runs", "rl_sample_efficiency"))
    p.add_argument("--out", default=os.path.join(HERE, "results", "rl_sample_efficiency"))
    return p.parse_args(argv)


def run_all(opt: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every training run and the true- and wrong-model MPC evaluations, in a process pool."""
    jobs = [(m, e, s, run_args(m, e, s, opt), opt.reuse) for e in opt.envs
            for m in opt.methods for s in opt.seeds]
    mpc_jobs = [(e, prm, opt) for e in opt.envs for prm in (TRUE, WRONG)]
    ctx = mp.get_context("spawn")
    with ctx.Pool(opt.workers, maxtasksperchild=1) as pool:
        mpc_res = pool.map_async(_mpc, mpc_jobs)
        runs = pool.map(_one, jobs, chunksize=1)
        mpc_out = mpc_res.get()
    return runs, mpc_out


def method_record(m: str, rs: list[dict[str, Any]], true_mpc: dict[str, Any], thr: float
                  ) -> dict[str, Any]:
    """Seed-mean curve of one method on one env, its steps to the threshold ``thr``, and for
    the DiLQR methods the model's parameter errors and the per-seed steps to target."""
    t = rs[0]["timesteps"]
    curves = np.array([r["mean"] for r in rs])
    mu, sd = curves.mean(0), curves.std(0)
    rec: dict[str, Any] = {
        "timesteps": t, "mean": mu.tolist(), "std": sd.tolist(),
        "final_mean": float(mu[-1]), "final_std": float(sd[-1]),
        "steps_to_target": first_reach(t, mu, thr),
        "train_s_per_step": float(np.mean([r["train_s_per_step"] for r in rs])),
    }
    if m.startswith("dilqr"):
        rec.update(param_errors(rs))
        # per seed: the first evaluation within 10 % of the true-model MPC's return on
        # that seed's evaluation episodes (the same initial states)
        rec["seed_steps_to_target"] = [
            first_reach(r["timesteps"], r["mean"],
                        within_10pct(true_mpc["per_seed"][str(r["seed"])]))
            for r in rs]
    return rec


def env_report(env: str, opt: argparse.Namespace, runs: list[dict[str, Any]],
               mpc_out: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of one env: the MPC references, every method, the targets."""
    true_mpc = next(r for r in mpc_out if r["env"] == env and r["params"] == TRUE)
    wrong_mpc = next(r for r in mpc_out if r["env"] == env and r["params"] == WRONG)
    thr = within_10pct(true_mpc["mean"])
    er: dict[str, Any] = {"mpc_true": true_mpc, "mpc_wrong": wrong_mpc, "threshold": thr,
                          "methods": {}}
    for m in opt.methods:
        rs = [r for r in runs if r["env"] == env and r["method"] == m]
        er["methods"][m] = method_record(m, rs, true_mpc, thr)
    mlp = [er["methods"][m]["steps_to_target"] for m in opt.methods if m.startswith("mlp")]
    mlp_reached = [s for s in mlp if s is not None]
    best_mlp = min(mlp_reached) if mlp_reached else None
    er["best_mlp_steps"] = best_mlp
    for m in opt.methods:
        if m.startswith("dilqr"):
            er["methods"][m].update(target(er["methods"][m]["steps_to_target"], best_mlp,
                                           opt.mlp_budget))
    return er


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    if opt.replot:  # the figure again from the JSON of a finished run
        with open(opt.out + ".json") as f:
            plot(json.load(f), opt.out + ".png")
        return 0
    t_start = time.perf_counter()
    runs, mpc_out = run_all(opt)
    report: dict[str, Any] = {"budget": opt.budget, "mlp_budget": opt.mlp_budget,
                              "seeds": opt.seeds,
                              "eval_freq": opt.eval_freq, "eval_episodes": opt.eval_episodes,
                              "horizon": opt.horizon, "max_iter": opt.max_iter,
                              "wrong_params": WRONG, "true_params": TRUE, "threads": 1,
                              "workers": opt.workers,
                              "envs": {env: env_report(env, opt, runs, mpc_out)
                                       for env in opt.envs}}
    report["wall_s"] = time.perf_counter() - t_start

    os.makedirs(os.path.dirname(opt.out), exist_ok=True)
    with open(opt.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    plot(report, opt.out + ".png")
    print_table(report)
    return 0


def print_table(report: dict[str, Any]) -> None:
    print(f"budget {report['budget']} env steps (MLP baselines {report.get('mlp_budget')}), "
          f"seeds {report['seeds']}, "
          f"wall {report['wall_s'] / 60:.1f} min")
    for env, er in report["envs"].items():
        print(f"\n{env}: true-model MPC {er['mpc_true']['mean']:.1f} +- "
              f"{er['mpc_true']['std']:.1f}, wrong-model MPC {er['mpc_wrong']['mean']:.1f} +- "
              f"{er['mpc_wrong']['std']:.1f}, target (within 10%) >= {er['threshold']:.1f}")
        print(f"  {'method':<16} {'final return':>18} {'steps to target':>16} "
              f"{'ms/step (train)':>16}")
        for m, r in er["methods"].items():
            s = r["steps_to_target"]
            print(f"  {m:<16} {r['final_mean']:>9.1f} +- {r['final_std']:>6.1f} "
                  f"{(str(s) if s is not None else '> budget'):>16} "
                  f"{1e3 * r['train_s_per_step']:>16.2f}")
            if "param_error_start" in r:
                print(f"  {'':<10} model error (g, m, l) {r['param_error_start']:.3f} -> "
                      f"{r['param_error_end']:.3f}; (g/l, m l^2) "
                      f"{r['identifiable_error_start']:.3f} -> "
                      f"{r['identifiable_error_end']:.3f}; per-seed steps to target "
                      f"{r['seed_steps_to_target']}")
                print(f"  {'':<10} steps / best MLP steps ({er['best_mlp_steps']}): "
                      f"{r['ratio']} (upper bound {r.get('ratio_upper_bound')}); "
                      f"target (<= 1/10) holds: {r['target_holds']}")


def plot(report: dict[str, Any], path: str) -> None:
    """Per env: every method's learning curve (mean +- std over seeds) with the MPC returns of
    the true and the initial model as reference lines; top row the full range, bottom row
    zoomed on the range of the references, where the DiLQR curves and the target live (a
    diverging baseline would otherwise squash them flat)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = list(report["envs"])
    fig, axes = plt.subplots(2, len(envs), figsize=(6 * len(envs), 8), squeeze=False)
    for col, env in enumerate(envs):
        er = report["envs"][env]
        refs = [er["mpc_true"]["mean"], er["mpc_wrong"]["mean"], er["threshold"]]
        for row in (0, 1):
            ax = axes[row, col]
            for i, (m, r) in enumerate(er["methods"].items()):
                t, mu, sd = (np.array(r[k]) for k in ("timesteps", "mean", "std"))
                ax.plot(t, mu, "o-", ms=3, color=f"C{i}", label=m)
                ax.fill_between(t, mu - sd, mu + sd, alpha=0.15, color=f"C{i}")
            ax.axhline(refs[0], color="k", ls="--", label="MPC, true model")
            ax.axhline(refs[2], color="k", ls=":", label="within 10 % (target)")
            ax.axhline(refs[1], color="r", ls="--", lw=0.8, label="MPC, initial model")
            ax.set_xlabel("env steps")
            ax.set_ylabel("deterministic return")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(f"{env} ({len(report['seeds'])} seeds, mean +- std)")
            else:
                lo, hi = min(refs), max(refs)
                pad = 0.25 * (hi - lo)
                ax.set_ylim(lo - pad, hi + pad)
                ax.set_title(f"{env}: zoom on the reference returns")
        axes[0, col].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())

