"""The benchmark: hotrepos against the classic Celery chord, on the local broker, Redis and fake GitHub."""
