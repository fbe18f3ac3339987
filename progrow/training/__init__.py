"""Lightning integration: the LM module, its data module, the growth callback and the
preemption callback.

Everything that imports Lightning lives here; the model, the expansions, optimizer
surgery, schedules, FLOPs and data (``progrow``, ``progrow.expand``, ``progrow.data``)
do not.
"""

from progrow.training.callback import GrowthCallback, stage_seed
from progrow.training.datamodule import SOURCES, LMDataModule, trainer_position
from progrow.training.module import LMModule, lm_loss
from progrow.training.preemption import FitInterrupted, PreemptionCallback

__all__ = [
    "SOURCES",
    "FitInterrupted",
    "GrowthCallback",
    "LMDataModule",
    "LMModule",
    "PreemptionCallback",
    "lm_loss",
    "stage_seed",
    "trainer_position",
]
