"""The backend interface: a small set of operations on firewall objects the enforcer owns.

Shaped like crowdsecurity/cs-firewall-bouncer's backends: changes are *staged* with :meth:`add` and
:meth:`delete` and applied in one batch by :meth:`commit` (one kernel commit, one ``ipset restore``), so
10,000 bans cost one round trip, not 10,000. :meth:`list` reads back what is in the kernel, so the agent
can reconcile. :meth:`ensure` creates or repairs the owned structure (chains, jump rules, sets) and is
idempotent. A backend only ever touches objects it owns (named from ``enforcer.chain_prefix``).
"""

from __future__ import annotations

import builtins
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import msgspec

from enforcer.plan import Add, Delete, JailSpec, KernelEntry, Key
from fleet2ban.settings import EnforcerSettings

CHAIN_NAME_MAX = 28  # XT_EXTENSION_MAXNAMELEN - 1
SET_NAME_MAX = 31  # IPSET_MAXNAMELEN - 1


class Failure(msgspec.Struct, frozen=True, gc=False):
    """One staged change the kernel refused, with its error text."""

    jail: str
    target: str
    error: str

    @property
    def key(self) -> Key:
        return (self.jail, self.target)


def owned_name(prefix: str, jail: str, suffix: str, limit: int) -> str:
    """``<prefix><jail><suffix>``, shortened with a stable hash when longer than ``limit``."""
    name = f"{prefix}{jail}{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.blake2b(jail.encode(), digest_size=3).hexdigest()
    keep = limit - len(prefix) - len(suffix) - len(digest) - 1
    return f"{prefix}{jail[:keep]}~{digest}{suffix}"


class Backend(ABC):
    """One firewall backend. Not thread-safe: the agent calls it from one thread."""

    name: ClassVar[str]
    timeouts: ClassVar[bool]
    """Whether entries carry kernel-side timeouts (listed back by :meth:`list`)."""

    def __init__(self, jails: Sequence[JailSpec], settings: EnforcerSettings) -> None:
        self.jails = list(jails)
        self.settings = settings
        self._adds: list[Add] = []
        self._deletes: list[Delete] = []
        self.auto_reason: str | None = None
        """Set when ``enforcer.backend: auto`` picked this backend: why."""

    def chain_name(self, jail: str) -> str:
        return owned_name(self.settings.chain_prefix, jail, "", CHAIN_NAME_MAX)

    # -- staging (shared)

    def add(self, add: Add) -> None:
        """Stage one entry (or the renewal of its timeout)."""
        self._adds.append(add)

    def delete(self, delete: Delete) -> None:
        """Stage the removal of one entry (a missing entry is not an error)."""
        self._deletes.append(delete)

    def _take_staged(self) -> tuple[list[Add], list[Delete]]:
        adds, deletes = self._adds, self._deletes
        self._adds, self._deletes = [], []
        return adds, deletes

    # -- the operations each backend implements

    @abstractmethod
    def check(self) -> None:
        """Raise a clear :class:`~enforcer.exceptions.FirewallCapabilityError` when this host cannot
        run the backend (privileges, commands, kernel)."""

    @abstractmethod
    def ensure(self) -> int:
        """Create or repair the owned chains, jump rules and sets; return how many repairs were made."""

    @abstractmethod
    def commit(self) -> list[Failure]:
        """Apply every staged change in one batch; return the ones that failed."""

    @abstractmethod
    def list(self) -> dict[Key, KernelEntry]:
        """The entries in the owned sets/chains now."""

    @abstractmethod
    def uninstall(self) -> builtins.list[str]:
        """Remove every owned object (jump rules, chains, sets); return what was removed."""

    @abstractmethod
    def show(self) -> str:
        """A human-readable listing of the owned objects and their entries."""

    def describe(self) -> str:
        """One line for the start-up log: where this backend's rules live and how to see them."""
        return f"backend {self.name}"

    def headline(self) -> str:
        """:meth:`describe`, preceded by what ``auto`` picked and why (for ``--show`` and the start-up log)."""
        picked = f"enforcer.backend auto picked {self.name}: {self.auto_reason}; " if self.auto_reason else ""
        return picked + self.describe()

    def metrics(self) -> dict[str, float]:
        """Backend gauges for the agent's metrics and heartbeat (e.g. set fill ratio)."""
        return {}
