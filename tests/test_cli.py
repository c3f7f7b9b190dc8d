"""The command line as a newcomer meets it: the demo shows what it prints, every ``--help``
is clean, and systems are named the same way in every command."""

from __future__ import annotations

import re

import pytest

from dilqr_rl import cli

HELP = [["demo"], ["imitate"], ["study"], ["study", "imitation"], ["train"], ["mpc"], []]


@pytest.mark.parametrize("argv", HELP, ids=lambda a: " ".join(a) or "top")
def test_help_is_clean(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: dilqr-rl")
    # no raw reST markup or unfilled placeholders, and every option explains itself
    assert "``" not in out and "LEARNERS``" not in out and "TODO" not in out
    options = re.findall(r"^  (--[a-z-]+)( [A-Z_{}]+)?\n?( {2,}\S.*)?$", out, re.M)
    assert all(o[2] or o[0] == "--help" for o in options if o[0] != "--help"), out


def test_demo_swings_up_and_checks_the_gradient(capsys) -> None:
    assert cli.main(["demo", "--batch", "3", "--steps", "100"]) == 0
    out = capsys.readouterr().out
    assert "3/3 upright" in out and "gradient check: PASSED" in out
    assert "on bound" in out and "where the plan ends" in out  # the columns are explained


def test_systems_are_task_names_everywhere() -> None:
    from dilqr_rl.agents.imitation import Args
    from dilqr_rl.agents.rl_args import parse_args

    args = parse_args(["--env", "cartpole", "--policy", "mlp"])
    assert args.env == "dilqr_rl/CartPole-v0"
    assert parse_args(["--env", "dilqr_rl/MujocoPendulum-v0"]).env == "dilqr_rl/MujocoPendulum-v0"
    assert Args(env="cartpole").env == "cartpole"


def test_unknown_env_is_a_flag_error(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--env", "Pendulum-v1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--env" in err and "pendulum" in err
