"""The planner's pure logic: load forecast (predictor plugins), the worker performance model,
per-pool sizing to a latency percentile with queueing, the joint allocation of a worker budget,
and the scaling rules (lead time, hysteresis, minimum lifetime, scale-to-zero). No I/O, no
clock, no asyncio; table-tested."""
