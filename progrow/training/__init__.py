"""Training with Lightning: the LM module, the growth callback, compute accounting."""

from progrow.training.callback import GrowthCallback, stage_seed
from progrow.training.flops import forward_flops_per_token, train_flops_per_token
from progrow.training.module import LMModule, lm_loss
from progrow.training.optim import OptimConfig

__all__ = [
    "GrowthCallback",
    "LMModule",
    "OptimConfig",
    "forward_flops_per_token",
    "lm_loss",
    "stage_seed",
    "train_flops_per_token",
]
