"""Benchmark `soak`: the real stack under a steady load and random faults for N minutes, then checks.

Two `opsbot run` replicas share a PostgreSQL database (each through a TCP relay of its own) and watch
a private RabbitMQ node, workers w1 and w2 (a Redis result backend records what really happened to
each task) and Flower; Slack is the stand-in, which records every post. A load generator sends tasks
(successes, failures, long ones) and types `/tasks` every few seconds, while the injector
(bench.soak.faults) breaks things at random, from a seed: a worker, the RabbitMQ node, Flower, the
leading replica or its database connection, Slack's Web API, the Socket Mode connections. At the end
the checks (bench.soak.checks) say whether every alert came once and resolved, every task reached
the history, every `/tasks` was acked in time, memory held and no thread died; the exit status is 1
when one did not.

    make bench ARGS="soak --minutes 20"            # the README's table
    make bench ARGS="soak --minutes 2 --seed 7"    # what tests/test_soak.py runs
"""

from __future__ import annotations

import argparse
import random

from bench.common import log, write_json
from bench.soak.plan import Kind, parse_kinds

NAME = "soak"
HELP = "real stack, two replicas on PostgreSQL, steady load and random faults for --minutes; checks at the end"
DEFAULT_SEED = None  # a fresh seed each run, printed so that a failing run can be replayed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(NAME)
    group.add_argument("--minutes", type=float, default=20.0, help="how long the faults go on (default: 20)")
    group.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the random seed (default: a fresh one)")
    group.add_argument("--faults", default=",".join(k.value for k in Kind), metavar="LIST",
                       help="comma-separated fault kinds to draw from (default: all)")
    group.add_argument("--rate", type=float, default=1.0, help="tasks sent a second (default: 1)")


def main(args: argparse.Namespace) -> int:
    """Run it, print the tables and checks, write bench/results/soak.json; 1 when a check failed."""
    from bench.soak.report import as_json, judge, print_report
    from bench.soak.run import Config, soak

    if args.minutes <= 0 or args.rate <= 0:
        raise ValueError("--minutes and --rate must be positive")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    config = Config(minutes=args.minutes, seed=seed, kinds=parse_kinds(args.faults), rate=args.rate)
    log(f"soak: seed {seed}")
    evidence = soak(config)
    verdict = judge(evidence)
    print_report(evidence, verdict)
    print(f"\n  results: {write_json(NAME, as_json(evidence, verdict))}")
    return 0 if verdict.ok else 1
