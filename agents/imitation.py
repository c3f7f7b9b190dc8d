"""Imitation learning through DiLQR (the DiLQR paper's section 5.2, following DiffMPC's
``imitation_nonconvex``): the public names, from the modules that hold them.

============================= ==============================================================
module                        holds
============================= ==============================================================
``agents/data.py``            expert data (:func:`make_expert_data`, ``ExpertData``)
``agents/imitation_args.py``  the settings :class:`Args`, :data:`LEARNERS`, :func:`check_args`
``agents/learners.py``        the learners, :func:`make_learner`, :func:`imitation_loss`
``agents/training.py``        the training loop :func:`train`
``agents/imitation_plots.py`` :func:`plot_run` (and the study's plot)
``agents/imitation_cli.py``   ``dilqr-rl imitate`` / ``study`` (:func:`main_imitate`,
                              :func:`main_study`)
``agents/study.py``           the study: runs, summary, table
``agents/fields.py``          settings fields with their flag's help, range checks
============================= ==============================================================
"""

from __future__ import annotations

from .imitation_args import LEARNERS, Args, check_args
from .imitation_cli import main_imitate, main_study
from .imitation_plots import plot_run
from .learners import imitation_loss, make_learner
from .training import train

__all__ = ["LEARNERS", "Args", "check_args", "train", "make_learner", "main_imitate",
           "main_study", "imitation_loss", "plot_run"]
