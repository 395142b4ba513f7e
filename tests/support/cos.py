"""Fixtures for the local S3-compatible server (filled in by the sink work)."""
