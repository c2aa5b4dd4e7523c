"""The image recipe and its locked dependencies."""
