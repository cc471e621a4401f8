"""Kept for imports only: processes are started by launcher.py; fingerprint lives in supervisor."""

from .supervisor import fingerprint

__all__ = ["fingerprint"]
