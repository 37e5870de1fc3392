"""Memory planner: predicted peak memory of a training run, before it starts.

    from lorakit.plan import estimate
    est = estimate("smollm2-135m-instruct", method="qlora", batch_size=1, seq_len=512, rank=16)
    print(est.format()); est.total, est.verdict
"""

from lorakit.plan.estimate import METHODS, Estimate, estimate
from lorakit.plan.speed import SpeedPlan, resolve_speed

__all__ = ["METHODS", "Estimate", "SpeedPlan", "estimate", "resolve_speed"]
