"""Several Celery stacks in one bot (issue 14): the stacks file, probing them together, the overview.

A single stack configured from the environment needs none of this: `OPSBOT_STACKS_FILE` unset, opsbot
runs exactly one stack and never shows a stack's name.
"""
