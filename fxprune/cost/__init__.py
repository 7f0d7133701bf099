"""Stage 3, cost: what a keep decision costs, in FLOPs, parameters or measured latency.

`model.CostModel` scales each node's FLOPs with the fraction of its channels a decision keeps; `terms` splits
fused attention into its own terms; `latency_table.LatencyModel` predicts latency from per-layer timings.
"""
from fxprune.cost.latency_table import LatencyModel
from fxprune.cost.model import CostModel, count_flops, count_params

__all__ = ["CostModel", "LatencyModel", "count_flops", "count_params"]
