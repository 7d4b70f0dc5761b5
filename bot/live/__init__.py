"""Live state (issue 20): what each worker runs, from Celery's event stream, so `/tasks` need not ask.

`state.py` keeps it (bounded, thread-safe); `probe.py` answers the Celery part of a snapshot from it and
asks only the workers it cannot vouch for; `reconcile.py` asks those in the background.
"""
