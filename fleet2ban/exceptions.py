"""Errors shared by every component; each package adds its own in its ``exceptions.py``."""

from __future__ import annotations


class Fleet2banError(Exception):
    """Base of every error fleet2ban raises on purpose. The CLI turns these into one clear line."""

    exit_code = 1


class ConfigError(Fleet2banError):
    """A setting is missing or invalid. Exit code 2."""

    exit_code = 2


class BrokerError(Fleet2banError):
    """Kafka cannot be reached, or the local Apache Kafka cannot start."""

    exit_code = 2


class CapabilityError(Fleet2banError):
    """A capability the command needs is missing (root, CAP_NET_ADMIN, a binary, a kernel feature)."""

    exit_code = 2
