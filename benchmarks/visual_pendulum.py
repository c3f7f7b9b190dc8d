"""The pendulum from pixels (DiLQR paper section 5.4): image prediction error over the horizon,
DiLQR against an autoregressive latent baseline (3 seeds, mean +- std), closed-loop success
from pixels from 20 hanging starts, wall times (JSON + PNG).

Both models share the encoder (4 stacked 64x64 frames -> state) and the decoder (state ->
frame), warmed up together on the true states, then trained end to end with the same data,
steps, batch and seed: DiLQR plans ``T = 20`` steps from the encoded state with learnable
``(g, m, l)`` (from a wrong guess) and is trained on imitation + prediction (+ the state term);
the baseline rolls a latent MLP forward under the expert's controls (it is told the actions)
and is trained on prediction (+ the state term). Prediction is scored on held-out episodes
from one image stack: the pixel MSE of each of the horizon's frames. The closed loop replans
every step from the encoded image stack (``agents/visual_train.py``). 1 thread.

Measured (the committed JSON): 38.6 min of wall time on 2 cores shared with other jobs (load
average 6 to 10), 8.8 min of CPU time; the progress bar shows the rate.

    python benchmarks/visual_pendulum.py            # the full run (8.8 min of CPU time)
    python benchmarks/visual_pendulum.py --quick    # the command's quick defaults
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from dilqr_rl.agents.visual_cli import VisualArgs, print_summary, run_visual, write_outputs

HERE = os.path.dirname(os.path.abspath(__file__))

#: the benchmark's settings (the command's defaults are a quick run)
FULL = dict(seeds=3, episodes=32, test_episodes=6, episode_steps=60, size=64,
            pretrain_steps=400, steps=150, batch=32, eval_samples=256, closed_loop=20,
            closed_loop_steps=None)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the command's quick defaults")
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    args = replace(VisualArgs(), progress=not a.no_progress, out=os.path.relpath(a.out),
                   **({} if a.quick else FULL))
    report, strip = run_visual(args)
    print_summary(report)
    paths = write_outputs(report, strip, os.path.join(a.out, "visual_pendulum"))
    print("wrote " + ", ".join(os.path.relpath(str(x)) for x in paths))
    return report


if __name__ == "__main__":
    main()
