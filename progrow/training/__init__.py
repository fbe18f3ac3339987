"""Lightning integration: the LM module, its data module and the growth callback.

Everything that imports Lightning lives here; the model, the expansions, optimizer
surgery, schedules, FLOPs and data (``progrow``, ``progrow.expand``, ``progrow.data``)
do not.
"""

from progrow.training.callback import GrowthCallback, stage_seed
from progrow.training.datamodule import SOURCES, LMDataModule, trainer_position
from progrow.training.module import LMModule, lm_loss

__all__ = [
    "SOURCES",
    "GrowthCallback",
    "LMDataModule",
    "LMModule",
    "lm_loss",
    "stage_seed",
    "trainer_position",
]
