"""The ``dryrun`` backend: logs what it would do, keeps an in-memory "kernel", needs no privileges.

Its in-memory entries count their timeouts down like ipset does (on a clock that tests may replace), so
the agent's reconcile logic behaves the same against it as against a real backend.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Callable, Sequence

from enforcer.backends.base import Backend, Failure
from enforcer.plan import JailSpec, KernelEntry, Key
from fleet2ban.settings import EnforcerSettings

log = logging.getLogger(__name__)


class DryRunBackend(Backend):
    name = "dryrun"
    timeouts = True

    def __init__(
        self,
        jails: Sequence[JailSpec],
        settings: EnforcerSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(jails, settings)
        self._clock = clock
        self.entries: dict[Key, float | None] = {}
        """(jail, target) -> monotonic deadline, or None when permanent."""
        self.commits = 0
        self.fail: set[str] = set()
        """Targets whose add is refused (for tests of the ``failed`` path)."""

    def check(self) -> None:
        return None

    def ensure(self) -> int:
        return 0

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, d in self.entries.items() if d is not None and d <= now]:
            del self.entries[key]

    def commit(self) -> list[Failure]:
        adds, deletes = self._take_staged()
        if not adds and not deletes:
            return []
        self.commits += 1
        now = self._clock()
        failures: list[Failure] = []
        for d in deletes:
            log.info("dryrun: would unban %s in jail %s", d.target, d.jail)
            self.entries.pop(d.key, None)
        for a in adds:
            if a.target in self.fail:
                failures.append(Failure(a.jail, a.target, "dryrun: refused on purpose"))
                continue
            log.info(
                "dryrun: would %s %s in jail %s (%s)",
                "renew" if a.renew else "ban",
                a.target,
                a.jail,
                "permanent" if a.timeout is None else f"{a.timeout}s",
            )
            self.entries[a.key] = None if a.timeout is None else now + a.timeout
        return failures

    def list(self) -> dict[Key, KernelEntry]:
        self._expire()
        now = self._clock()
        out: dict[Key, KernelEntry] = {}
        for key, deadline in self.entries.items():
            timeout = None if deadline is None else max(0, round(deadline - now))
            out[key] = KernelEntry(key[0], key[1], timeout)
        return out

    def uninstall(self) -> builtins.list[str]:
        self.entries.clear()
        return []

    def show(self) -> str:
        lines = [f"dryrun backend: {len(self.list())} entries (in memory only; nothing is in the kernel)"]
        lines += [f"  {k[0]} {k[1]}" for k in sorted(self.list())]
        return "\n".join(lines)

    def describe(self) -> str:
        return "backend dryrun: nothing is applied to the kernel; every change is only logged"
