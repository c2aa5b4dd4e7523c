"""The original design, kept as the benchmark's yardstick: a Celery group of page fetches, a chord into
the CSV task, Redis as the result backend. Not part of the product."""
