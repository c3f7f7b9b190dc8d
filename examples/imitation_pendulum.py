"""Learn the pendulum's (g, m, l) from expert actions through DiLQR (about 1 minute on CPU).

Same as ``dilqr-rl imitate --env pendulum --mode dx``: the exact fixed-point gradient, from
DiffMPC's initial guess (15, 3, 0.5). Pass ``--compare`` to also run DiffMPC's gradient.
"""

from __future__ import annotations

import sys

from dilqr_rl.agents.imitation import main_imitate

if __name__ == "__main__":
    sys.exit(main_imitate(["--env", "pendulum", "--mode", "dx", *sys.argv[1:]]))
