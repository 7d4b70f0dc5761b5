"""What the stack looks like now: the probes that read it, the plain-data snapshot they fill, the
heartbeat tracker, the assessment that decides each level, and the status views drawn from it."""
