"""`tandem audit`: how much of a pool is idle, and what split and size it should run.

Reads a live pool (the routers' and workers' /metrics, or a Prometheus server)
over a window and reports, in the planner's own terms (tandem.planner.demand),
utilization and pressure per role, the prefill/decode imbalance, SLO
attainment, and the split and GPU count that would run each role at target.
"""
