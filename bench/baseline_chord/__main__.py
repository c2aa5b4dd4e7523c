"""The baseline's Celery worker: `python -m bench.baseline_chord`, prefork, one process per core."""

from __future__ import annotations

import os
from pathlib import Path

from bench.baseline_chord.tasks import create_app, register_tasks


def main() -> None:
    app = create_app(os.environ["BASELINE_AMQP_URL"], os.environ["BASELINE_REDIS_URL"])
    register_tasks(
        app,
        github_url=os.environ["GITHUB_API_URL"].rstrip("/"),
        token=os.environ.get("GITHUB_TOKEN"),
        reports_dir=Path(os.environ.get("REPORTS_DIR", "reports")),
    )
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={os.environ.get('BASELINE_CONCURRENCY') or os.cpu_count() or 2}",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            f"--loglevel={os.environ.get('LOG_LEVEL', 'INFO')}",
        ]
    )


if __name__ == "__main__":
    main()
