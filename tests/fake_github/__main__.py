"""Command line: `python -m tests.fake_github --host 127.0.0.1 --port 9000`."""

from __future__ import annotations

import argparse
import signal
import threading
from datetime import date
from types import FrameType

from .dataset import DEFAULT_REPOSITORY_COUNT, DEFAULT_SEED
from .server import FakeGitHub


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(prog="python -m tests.fake_github", description="Serve a fake GitHub search API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument(
        "--rate-limit", type=int, default=None, help="requests per token (or IP) per rolling window; default unlimited"
    )
    parser.add_argument(
        "--rate-limit-window", type=float, default=60.0, help="seconds the rate limit counts over; default 60"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--repos", type=int, default=DEFAULT_REPOSITORY_COUNT)
    parser.add_argument(
        "--today",
        type=date.fromisoformat,
        default=None,
        help="YYYY-MM-DD the dataset counts back from; default today (UTC)",
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then shut down cleanly."""
    args = parse_args(argv)
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    fake = FakeGitHub(
        host=args.host,
        port=args.port,
        latency_ms=args.latency_ms,
        rate_limit_per_minute=args.rate_limit,
        rate_limit_window_seconds=args.rate_limit_window,
        seed=args.seed,
        today=args.today,
        repos=args.repos,
        verbose=args.verbose,
    ).start()
    print(f"fake GitHub listening on {fake.url}", flush=True)
    try:
        # A timed wait keeps the main thread responsive to signals.
        while not stop_requested.wait(0.1):
            pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
