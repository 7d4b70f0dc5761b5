"""`python -m bench [NAME ...]`: run the named benchmarks (default: all but the soak), print figures, write JSON.

A benchmark is a module exposing NAME, HELP, `add_arguments(parser)` and `main(args)`; add it to
BENCHMARKS below. Exit status: 0 when every benchmark ran (whether or not its targets were met),
1 when one failed to run or its checks failed (a `main` that returns a non-zero status: the soak),
130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from types import ModuleType

from bench import alerts, failover, idle, scale, soak, status, terminate
from bench.common import log

BENCHMARKS: dict[str, ModuleType] = {
    module.NAME: module for module in (status, terminate, alerts, scale, idle, failover, soak)
}
ON_REQUEST = {soak.NAME}  # runs only when named: it takes --minutes (20 by default)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    listing = "\n".join(f"  {name:<10} {module.HELP}" for name, module in BENCHMARKS.items())
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="opsbot benchmarks: figures, not pass/fail.",
        epilog=f"benchmarks:\n{listing}", formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all but soak)")
    parser.add_argument("--n", type=int, default=200, help="timed samples per scenario (default: 200)")
    for module in BENCHMARKS.values():
        module.add_arguments(parser)
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (choose from {', '.join(BENCHMARKS)})")
    if args.n < 1:
        parser.error("--n must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failed = []
    for name in args.names or [name for name in BENCHMARKS if name not in ON_REQUEST]:
        log(f"benchmark {name}")
        try:
            if BENCHMARKS[name].main(args):
                failed.append(name)
        except KeyboardInterrupt:
            log(f"benchmark {name} interrupted; services stopped")
            return 130
        except Exception:
            traceback.print_exc()
            failed.append(name)
    if failed:
        log(f"failed to run, or failed their checks: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
