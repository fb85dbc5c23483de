"""SwAV's mathematics: distributed Sinkhorn-Knopp (`sinkhorn`), the multi-crop loss (`loss`),
the embedding queue (`queue`), prototype freezing and collapse signals (`prototypes`)."""

from seer_core.swav.loss import swav_loss
from seer_core.swav.prototypes import (
    cancel_prototype_gradients,
    collapse_suspected,
    effective_rank,
    prototype_usage_entropy,
)
from seer_core.swav.queue import SwAVQueue
from seer_core.swav.sinkhorn import sinkhorn

__all__ = ["SwAVQueue", "cancel_prototype_gradients", "collapse_suspected", "effective_rank",
           "prototype_usage_entropy", "sinkhorn", "swav_loss"]
