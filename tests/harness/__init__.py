"""Helpers shared by tests (no tests here): payloads made by the real producers, not typed by hand."""
