"""Every Python block of the README runs as written and shows what it says: each block runs
in a fresh interpreter, followed by checks of its claims."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)

#: per block (found by a line it contains): checks run after it, on its own variables
CHECKS = {
    # the Use block: converged plans, non-zero exact gradients, a swing-up that reaches upright
    "sol = ctrl(x0)": """
assert bool(sol.converged.all()), sol.converged
assert float(dyn.m.grad.abs()) > 1e-3 and float(cost.weights.grad.abs().max()) > 1e-3
assert sol_b.u.shape == (2, 20, 1) and not torch.allclose(sol_b.x[1], sol.x[1])
assert abs(math.atan2(float(x[0, 1]), float(x[0, 0]))) < math.radians(2.0), x
assert abs(float(x[0, 2])) < 0.1, x
""",
    # the env block: the env exists with the given true mass, and renders
    'gym.make("dilqr_rl.envs:': """
env.reset(seed=0)
assert env.unwrapped.episode_params["m"] == 1.3
assert env.render().ndim == 3
""",
    # your own system: the two-link arm reaches its goal under MPC with a wrong model
    "class TwoLinkArm": """
assert abs(obs[0] - math.pi / 2) < 0.05 and abs(obs[1]) < 0.05, obs
assert ARM is dl.tasks.get("arm") and ctrl.dynamics.theta().tolist()[1] == 1.5
""",
}


def _checks(block: str) -> str:
    found = [c for key, c in CHECKS.items() if key in block]
    assert len(found) == 1, f"no checks (or several) for the README block:\n{block[:300]}"
    return found[0]


def test_every_block_has_checks() -> None:
    assert len(BLOCKS) >= 3
    for block in BLOCKS:
        _checks(block)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_and_shows_its_claim(index: int) -> None:
    block = BLOCKS[index]
    code = ("import math\nimport torch\ntorch.set_num_threads(1)\n" + block + "\n"
            + _checks(block))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, env={"MUJOCO_GL": "egl", **os.environ})
    assert out.returncode == 0, out.stderr[-3000:]
