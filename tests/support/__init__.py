"""What tests and benchmarks run against: the real stack's processes, the bot as a process, the Slack
stand-in, PostgreSQL, the synthetic fleet. Plain classes and functions; the pytest fixtures built on
them live in tests/conftest.py."""
