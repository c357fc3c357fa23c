"""Re-run recorded training steps: the replay primitive (`replay_steps`), the optimizer rebuild
(`build_optimizer`, class resolved only among torch.optim's own), and a spike's window
(`spike_window`). The counterfactual layer (`forensics.whatif`) and a keyframe recorder build
on these."""

from forensics.replay.optimizer import (
           build_optimizer,
           resolve_optimizer_class,
           set_hparams,
)
from forensics.replay.stepper import StepInput, StepOutcome, replay_steps
from forensics.replay.window import Window, spike_window

__all__ = ["StepInput", "StepOutcome", "Window", "build_optimizer", "replay_steps",
           "resolve_optimizer_class", "set_hparams", "spike_window"]
