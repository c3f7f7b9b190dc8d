"""The DiLQR paper's imitation comparison (section 5.2): pendulum and cartpole, train = 50 and
100, 5 seeds, mean +- std; writes ``benchmarks/results/imitation_study.{json,md,png}``.

    python benchmarks/imitation_study.py                     # default budget (20 epochs)
    python benchmarks/imitation_study.py --epochs 1000 --eval-every 10   # the paper's budget

Same flags as ``dilqr-rl study imitation`` (``--help``).
"""

from __future__ import annotations

import sys

from dilqr_rl.agents.study import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
