"""The gateway: the web page and HTTP API in front of the pipeline."""
