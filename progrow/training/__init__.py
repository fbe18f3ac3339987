"""Lightning integration: the LM module, its data module, the growth callback and the
preemption callback, and FSDP2 growth (``GrowableModelParallelStrategy``).

Everything that imports Lightning lives here; the model, the expansions, optimizer
surgery, schedules, FLOPs and data (``progrow``, ``progrow.expand``, ``progrow.data``)
do not.
"""

from progrow.loss import lm_loss
from progrow.training.callback import GrowthCallback, stage_seed
from progrow.training.datamodule import SOURCES, LMDataModule, trainer_position
from progrow.training.fsdp import GrowableModelParallelStrategy
from progrow.training.module import LMModule
from progrow.training.preemption import PreemptionCallback
from progrow.training.signals import FitInterrupted

__all__ = [
    "SOURCES",
    "FitInterrupted",
    "GrowableModelParallelStrategy",
    "GrowthCallback",
    "LMDataModule",
    "LMModule",
    "PreemptionCallback",
    "lm_loss",
    "stage_seed",
    "trainer_position",
]
