"""Periodic policies: pure planners (snapshot -> plan) plus the runtime that schedules them."""
