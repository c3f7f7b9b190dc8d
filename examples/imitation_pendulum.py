"""Learn the pendulum's model from expert actions through DiLQR (30 s on 2 CPU cores).

Same as ``dilqr-rl imitate --env pendulum --mode dx``, the README's main demo: the exact
fixed-point gradient, from DiffMPC's initial guess (15, 3, 0.5). Pass ``--compare`` to also
run DiffMPC's gradient.

Claim (printed, and checked by tests/test_examples.py): the identifiable combinations ``g/l``
and ``m l^2`` (the only ones the dynamics depend on) end within 2 % of the truth (measured:
0.9 % and 0.1 %); the raw ``(g, m, l)`` end within 3 %.
"""

from __future__ import annotations

import sys

from dilqr_rl.agents.imitation import main_imitate

if __name__ == "__main__":
    sys.exit(main_imitate(["--env", "pendulum", "--mode", "dx", *sys.argv[1:]]))
