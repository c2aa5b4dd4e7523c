"""A stdlib-only fake of GitHub's repository search API for demos, tests and benchmarks."""

from .server import FakeGitHub

__all__ = ["FakeGitHub"]
