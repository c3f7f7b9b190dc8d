"""The pendulum from pixels with DiLQR inside the network (DiLQR paper section 5.4).

An encoder reads four stacked 32x32 frames (a line from the centre at the pendulum's angle)
and outputs the state; a DiLQR layer with learnable physical parameters (g, m, l) plans from it;
a decoder renders the planned states. Trained end to end on imitation of the true-model expert's
controls and on prediction of the expert trajectory's frames, against an autoregressive latent
model with the same encoder and decoder; then the DiLQR model swings the pendulum up from
pixels alone. Same as ``dilqr-rl visual``.

The default is a quick run: a few dozen training steps, one seed, 32x32 frames, too short to
learn a usable model (measured: 0 of 4 closed-loop starts; 23 s of CPU time, 94 s of wall
time on 2 cores shared with other jobs, load average 5). ``benchmarks/visual_pendulum.py`` runs the
full experiment (3 seeds, 64x64 frames, 20 closed-loop starts); its measured numbers are in
the README. Flags: ``python examples/visual_pendulum.py --help``.
"""

from __future__ import annotations

import sys

from dilqr_rl.agents.visual_cli import main_visual

if __name__ == "__main__":
    sys.exit(main_visual(sys.argv[1:]))
