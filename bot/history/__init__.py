"""Task history: Celery task events folded into one row per task, written to and read from the store."""
