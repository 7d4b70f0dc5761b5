"""Task control from Slack: the rules and stack calls of terminate and purge, and who may act."""
