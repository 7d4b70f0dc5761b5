"""Probes: read the broker, the Celery workers and Flower, and return a `Snapshot` (bot.status.snapshot).

One module per service (`broker`: RabbitMQ and Redis; `celery_probe`: the workers, through remote
control; `flower`), `failures` sorts what went wrong into the kinds a user can act on, and `prober`
runs them all at once under one deadline.
"""
