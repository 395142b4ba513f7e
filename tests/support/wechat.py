"""Fixtures for the WeChat emulator."""
