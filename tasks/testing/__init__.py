"""Helpers for running the project in tests and the bench; standard library only."""

from __future__ import annotations
