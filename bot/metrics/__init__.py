"""Prometheus metrics, and the /healthz and /readyz endpoints, for the monitoring stack teams already run.

The `celery_*` metrics keep celery-exporter's names, labels and buckets, so its dashboards and alert
rules work against opsbot unchanged (README, "Metrics", lists the differences). Task counters and the
runtime histogram follow Celery's event stream; everything about the stack's state comes from the
latest snapshot, read by a custom collector: a scrape never waits on a broker, worker or database.
Anything slow (a snapshot, reading the store) runs in background threads that keep those facts fresh.

`families` turns a snapshot into metric families (pure), `collector` holds the registry and readiness,
`serve` keeps the facts fresh and answers /metrics, /healthz and /readyz.
"""
