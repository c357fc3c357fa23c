"""Re-run recorded training steps: the replay primitive (`replay_steps`), the optimizer rebuild
(`build_optimizer`, class resolved only among torch.optim's own), a snapshot's state put back
into a model and optimizer (`restore`), and a spike's window (`spike_window`).

The counterfactual layer (`forensics.whatif`) and a keyframe recorder build on these.

Example (re-run the steps after a snapshot; a keyframe recorder does the same between keyframes):
    >>> opt = restore(model, run.snapshot(t0).load(), resolve_optimizer_class(path))  # doctest: +SKIP
    >>> steps = [StepInput(t, batch_t, groups_t), ...]                               # doctest: +SKIP
    >>> outs = replay_steps(model, opt, loss_fn, ("x", "y"), steps)                  # doctest: +SKIP
"""

from forensics.replay.optimizer import (
           build_optimizer,
           resolve_optimizer_class,
           set_hparams,
)
from forensics.replay.state import load_params, restore
from forensics.replay.stepper import StepInput, StepOutcome, replay_steps
from forensics.replay.window import Window, spike_window

__all__ = ["StepInput", "StepOutcome", "Window", "build_optimizer", "load_params", "replay_steps",
           "resolve_optimizer_class", "restore", "set_hparams", "spike_window"]
