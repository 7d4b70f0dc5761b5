"""Alerts: the pure engine that turns snapshots and the clock into incidents and effects, and the
service that runs it on a schedule, keeps its state in the store and delivers its posts."""
