"""The IW-OPD objective as pure tensor math: the advantage, the prefix weights, the losses
(IW-OPD, OPD, JSD top-1) and their metrics. The ground floor: nothing here imports the rest of the kit.
"""

from .core import (
    REDUCTIONS,
    advantage,
    exclusive_share,
    iw_opd_loss,
    iw_opd_metrics,
    jsd_top1_loss,
    ObjectiveResult,
    opd_loss,
    position_mask,
    prefix_weights,
    tis_weights,
)

__all__ = [
    "REDUCTIONS",
    "advantage",
    "exclusive_share",
    "iw_opd_loss",
    "iw_opd_metrics",
    "jsd_top1_loss",
    "ObjectiveResult",
    "opd_loss",
    "position_mask",
    "prefix_weights",
    "tis_weights",
]
