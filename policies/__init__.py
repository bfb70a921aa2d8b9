"""Periodic policies: pure planners (snapshot -> plan) plus the runtime that schedules them.

score      the one cluster scorer (spread of host utilisation + move costs)
model      mutable working copy of a snapshot that planners move VMs in
fits       built-in placement rules, the swappable ``fits`` seam, replaying moves
balance    load balancer (greedy + look-ahead, hysteresis, cooldowns)
forecast   Holt-Winters load forecasts
scale      elastic scaling groups
power      consolidation / power-off recommendations with N+1 headroom
recover    failure detection, fence-storm guard, HA restart plans, crash backoff
plan       the actions and stages every planner hands to the shared executor
runtime    APScheduler jobs, leader lease, dry runs
jobs       the built-in policies as runtime jobs
adapters   the scheduler (vmmgr.scheduler) plugged into the planners' seams
"""
