"""The ``ipset`` backend (default): per jail one set per family, matched by one python-iptables rule.

- Sets ``<prefix><jail>-4`` / ``-6`` (``f2b-amps-4``), ``hash:net`` where the rails let prefix bans
  through (``enforcer.min_prefix_v4 < 32`` / ``min_prefix_v6 < 128``), else ``hash:ip``; created with
  ``timeout 0`` so every entry carries its own kernel-side timeout: a ban expires in the kernel even if
  the enforcer is dead. ``maxelem`` from ``enforcer.set_maxelem``; the fill ratio is a metric and is
  alarmed well before full.
- The chain ``<prefix><jail>`` holds exactly one rule per family: ``-p tcp -m set --match-set SET src
  -j DROP`` (or REJECT with a TCP reset); anything else found there is removed by :meth:`ensure`.
- A commit of up to ``NETLINK_MAX`` changes (the live case: a few new bans) goes to the kernel over
  netlink in process (pyroute2), one acknowledged message per entry, about 0.3 ms each instead of the
  2-5 ms of forking ``ipset``. Without ``NLM_F_EXCL`` the kernel applies the ``-exist`` semantics: re-adding
  an entry *updates its timeout*, which is how a re-applied or extended ban is renewed, and deleting a
  missing entry is not an error. A refused entry is reported failed with the kernel's reason.
- Bigger batches (the first load, a full reconcile's repairs) go through the ``ipset`` command in batch
  mode: one ``ipset restore -exist`` per commit (about 40 ms for 10,000 entries). When the kernel refuses
  a line, ``ipset restore`` stops and names the line: that entry is reported failed and the rest is
  applied again (idempotent with ``-exist``).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import re
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from enforcer.backends.base import SET_NAME_MAX, Backend, Failure, owned_name
from enforcer.backends.libnft import netns_id
from enforcer.backends.xtables import FAMILIES, XTables, describe_variant, require_net_admin, xtables_lock
from enforcer.exceptions import BackendError, FirewallCapabilityError
from enforcer.plan import Add, Delete, JailSpec, KernelEntry, Key
from fleet2ban.contract import ContractError, normalize_target
from fleet2ban.settings import EnforcerSettings

log = logging.getLogger(__name__)

_LINE_ERR = re.compile(r"Error in line (\d+):\s*(.*)")
MAX_RESTORE_RETRIES = 100
NETLINK_MAX = 64
"""Commits of up to this many changes go over netlink in process; bigger ones through ``ipset restore``."""


@dataclass(frozen=True)
class SetHeader:
    type: str
    family: str
    maxelem: int
    timeout: bool
    entries: int
    references: int


def parse_header(text: str) -> SetHeader | None:
    """Parse ``ipset list -t NAME``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    if "Type" not in fields:
        return None
    header = fields.get("Header", "").split()
    opts = dict(zip(header[::2], header[1::2], strict=False))
    return SetHeader(
        type=fields["Type"],
        family=opts.get("family", ""),
        maxelem=int(opts.get("maxelem", "0")),
        timeout="timeout" in opts,
        entries=int(fields.get("Number of entries", "0")),
        references=int(fields.get("References", "0")),
    )


def parse_save(text: str, set_name: str) -> dict[str, int | None]:
    """Entries of ``ipset save NAME``: target -> seconds left (None = permanent / no timeout)."""
    out: dict[str, int | None] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] != "add" or parts[1] != set_name:
            continue
        try:
            target = normalize_target(parts[2])
        except ContractError:
            continue
        timeout: int | None = None
        if "timeout" in parts:
            i = parts.index("timeout")
            if i + 1 < len(parts) and parts[i + 1].isdigit():
                timeout = int(parts[i + 1]) or None
        out[target] = timeout
    return out


class IpsetBackend(Backend):
    name = "ipset"
    timeouts = True

    def __init__(self, jails: Sequence[JailSpec], settings: EnforcerSettings) -> None:
        super().__init__(jails, settings)
        self._xt: XTables | None = None
        self._ipset = shutil.which("ipset") or "ipset"
        self._alarmed: set[str] = set()
        self._nl: Any = None
        self._nl_ns = 0
        self._names: dict[tuple[str, int], str] = {}

    @property
    def xt(self) -> XTables:
        if self._xt is None:
            self._xt = XTables(self.jails, self.chain_name, self.settings.target)
        return self._xt

    # -- names

    def set_name(self, jail: str, family: int) -> str:
        name = self._names.get((jail, family))  # asked once per change of a commit
        if name is None:
            name = self._names[(jail, family)] = owned_name(
                self.settings.chain_prefix, jail, f"-{family}", SET_NAME_MAX
            )
        return name

    def set_type(self, family: int) -> str:
        full = 32 if family == 4 else 128
        minimum = self.settings.min_prefix_v4 if family == 4 else self.settings.min_prefix_v6
        return "hash:net" if minimum < full else "hash:ip"

    def _sets(self) -> list[tuple[str, int, str]]:
        return [(s.name, f, self.set_name(s.name, f)) for s in self.jails for f in FAMILIES]

    # -- the ipset command

    def _run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                [self._ipset, *args], input=input, capture_output=True, text=True, timeout=60, check=False
            )
        except FileNotFoundError:
            raise FirewallCapabilityError(
                "the ipset backend needs the 'ipset' command: apt-get install ipset"
            ) from None
        except subprocess.TimeoutExpired:
            raise BackendError(f"ipset {' '.join(args[:2])} timed out") from None
        if check and proc.returncode != 0:
            raise BackendError(f"ipset {' '.join(args[:2])}: {proc.stderr.strip()}")
        return proc

    def header(self, set_name: str) -> SetHeader | None:
        proc = self._run("list", "-t", set_name, check=False)
        return parse_header(proc.stdout) if proc.returncode == 0 else None

    def restore(self, lines: list[str]) -> list[tuple[int, str]]:
        """Feed ``lines`` to ``ipset restore -exist``; return (index, error) of the refused lines.

        ipset stops at the first refused line (sometimes without applying earlier ones), so the
        remaining lines are fed again without it: ``-exist`` makes that idempotent.
        """
        refused: list[tuple[int, str]] = []
        pending = list(range(len(lines)))
        for _ in range(MAX_RESTORE_RETRIES):
            if not pending:
                break
            script = "\n".join(lines[i] for i in pending) + "\n"
            proc = self._run("restore", "-exist", input=script, check=False)
            if proc.returncode == 0:
                return refused
            m = _LINE_ERR.search(proc.stderr)
            if not m or not 1 <= int(m[1]) <= len(pending):
                raise BackendError(f"ipset restore: {proc.stderr.strip()}")
            bad = pending.pop(int(m[1]) - 1)
            refused.append((bad, m[2].strip()))
        else:
            raise BackendError(f"ipset restore: more than {MAX_RESTORE_RETRIES} refused lines")
        return refused

    # -- backend operations

    def check(self) -> None:
        require_net_admin(self.name)
        if shutil.which("ipset") is None:
            raise FirewallCapabilityError(
                "the ipset backend needs the 'ipset' command: apt-get install ipset"
            )
        self._run("list", "-n")
        with xtables_lock():
            self.xt.refresh()

    def describe(self) -> str:
        sets = ", ".join(n for _, _, n in self._sets())
        chains = [self.chain_name(j.name) for j in self.jails]
        return f"backend ipset (sets {sets}; see them with `ipset list`): {describe_variant(chains)}"

    def _create_line(self, set_name: str, family: int) -> str:
        fam = "inet" if family == 4 else "inet6"
        return f"create {set_name} {self.set_type(family)} family {fam} timeout 0 maxelem {self.settings.set_maxelem}"

    def _set_rule(self, family: int, set_name: str) -> Any:
        r = self.xt.rule(family)
        m = r.create_match("set")
        m.match_set = [set_name, "src"]
        self.xt.set_target(r)
        return r

    def _is_set_rule(self, rule: Any, set_name: str) -> bool:
        if not self.xt.target_matches(rule) or rule.src not in (None, "0.0.0.0/0.0.0.0", "::/0"):
            return False
        matches = [m for m in rule.matches if m.name != "tcp"]
        if len(matches) != 1 or matches[0].name != "set":
            return False
        params = matches[0].get_all_parameters()
        return params.get("match-set") == [set_name, "src"] and len(params) == 1

    def ensure(self) -> int:
        # The netlink socket small commits use, opened now (the agent's first full reconcile), not by the
        # first live ban: importing pyroute2 takes about 0.3 s, which was the enforce delay's maximum
        # (0.26-0.29 s in bench enforcer_apply). A failure is left to commit(): it falls back to `ipset
        # restore` and says why.
        with contextlib.suppress(Exception):
            self.netlink()
        recreate, creates = self._check_sets()
        repairs = len(recreate) + len(creates)
        with xtables_lock():
            self.xt.refresh()
            if recreate:
                self._unhook(recreate)
                for family, _, set_name in recreate:
                    self._run("destroy", set_name)
                    creates.append(self._create_line(set_name, family))
            if creates:
                self._run("restore", "-exist", input="\n".join(creates) + "\n")
            for family in FAMILIES:
                changed = sum(self._ensure_chain(family, spec) for spec in self.jails)
                if changed:
                    self.xt.commit(family)
                repairs += changed
        return repairs

    def _check_sets(self) -> tuple[list[tuple[int, str, str]], list[str]]:
        """The sets to remake (another type or family, no timeouts) as (family, jail, set), and the
        ``ipset restore`` lines creating the missing ones."""
        recreate: list[tuple[int, str, str]] = []
        creates: list[str] = []
        for jail, family, set_name in self._sets():
            head = self.header(set_name)
            fam = "inet" if family == 4 else "inet6"
            if head is None:
                creates.append(self._create_line(set_name, family))
            elif head.type != self.set_type(family) or head.family != fam or not head.timeout:
                log.warning(
                    "set %s is %s family %s%s; recreating it as %s with timeouts",
                    set_name,
                    head.type,
                    head.family,
                    "" if head.timeout else " without timeouts",
                    self.set_type(family),
                )
                recreate.append((family, jail, set_name))
            elif head.maxelem != self.settings.set_maxelem and set_name not in self._alarmed:
                self._alarmed.add(set_name)
                log.warning(
                    "set %s has maxelem %d, settings say %d: uninstall and restart to resize it",
                    set_name,
                    head.maxelem,
                    self.settings.set_maxelem,
                )
        return recreate, creates

    def _unhook(self, recreate: list[tuple[int, str, str]]) -> None:
        """A set referenced by a rule cannot be destroyed: empty the chains using them first."""
        for family, jail, _ in recreate:
            if self.xt.table(family).is_chain(self.chain_name(jail)):
                self.xt.iptc.Chain(self.xt.table(family), self.chain_name(jail)).flush()
        for family in {f for f, _, _ in recreate}:
            self.xt.commit(family)

    def _ensure_chain(self, family: int, spec: JailSpec) -> int:
        """The jail's chain, hooked, holding only the rule matching its set; how many repairs."""
        changed = self.xt.ensure_chain(family, spec)
        set_name = self.set_name(spec.name, family)
        chain = self.xt.iptc.Chain(self.xt.table(family), self.chain_name(spec.name))
        rules = list(chain.rules)
        if len(rules) != 1 or not self._is_set_rule(rules[0], set_name):
            if rules:
                log.warning("chain %s (IPv%d) held foreign rules: reset", chain.name, family)
            chain.flush()
            chain.append_rule(self._set_rule(family, set_name))
            changed += 1
        return changed

    def netlink(self) -> Any:
        """A pyroute2 ipset socket in the calling thread's network namespace (reopened when it changed)."""
        ns = netns_id()
        if self._nl is None or self._nl_ns != ns:
            self.close()
            try:
                from pyroute2.ipset import IPSet
            except ImportError as exc:
                raise FirewallCapabilityError(
                    f"pyroute2 is not installed ({exc}): pip install pyroute2"
                ) from None
            self._nl, self._nl_ns = IPSet(), ns
        return self._nl

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def commit(self) -> list[Failure]:
        adds, deletes = self._take_staged()
        if not adds and not deletes:
            return []
        if len(adds) + len(deletes) <= NETLINK_MAX:
            try:
                nl = self.netlink()
            except Exception as exc:  # no netlink here: the ipset command still works
                log.warning("ipset over netlink unavailable (%s): using `ipset restore`", exc)
            else:
                return self._commit_netlink(nl, adds, deletes)
        return self._commit_restore(adds, deletes)

    def _commit_netlink(self, nl: Any, adds: list[Add], deletes: list[Delete]) -> list[Failure]:
        from pyroute2.netlink.exceptions import NetlinkError

        failures: list[Failure] = []
        changes: list[Add | Delete] = [*deletes, *adds]
        for i, change in enumerate(changes):
            family = socket.AF_INET if change.family == 4 else socket.AF_INET6
            etype = "net" if "/" in change.target else "ip"
            name = self.set_name(change.jail, change.family)
            try:
                if isinstance(change, Delete):
                    nl.delete(name, change.target, family=family, exclusive=False, etype=etype)
                else:
                    timeout = 0 if change.timeout is None else change.timeout
                    nl.add(name, change.target, family=family, exclusive=False, etype=etype, timeout=timeout)
            except NetlinkError as exc:  # the kernel refused this entry (IPSetError and kin)
                failures.append(Failure(change.jail, change.target, f"ipset: {exc}"))
            except Exception as exc:
                if isinstance(exc, ValueError) or (isinstance(exc, OSError) and exc.errno is None):
                    # this entry could not even be encoded (inet_pton): refused alone
                    failures.append(Failure(change.jail, change.target, f"ipset: {exc}"))
                    continue
                # the socket itself failed: reopen it next time; the rest by restore
                log.warning("ipset over netlink failed (%s): `ipset restore` applies the rest", exc)
                self.close()
                rest = changes[i:]
                return failures + self._commit_restore(
                    [c for c in rest if isinstance(c, Add)], [c for c in rest if isinstance(c, Delete)]
                )
        return failures

    def _commit_restore(self, adds: list[Add], deletes: list[Delete]) -> list[Failure]:
        set_name = self.set_name
        lines = [f"del {set_name(d.jail, d.family)} {d.target}" for d in deletes]
        lines += [
            f"add {set_name(a.jail, a.family)} {a.target} timeout {0 if a.timeout is None else a.timeout}"
            for a in adds
        ]
        changes: list[Add | Delete] = [*deletes, *adds]  # in the order of ``lines``
        try:
            refused = self.restore(lines)
        except BackendError as exc:
            return [Failure(c.jail, c.target, str(exc)) for c in changes]
        return [Failure(changes[i].jail, changes[i].target, f"ipset: {err}") for i, err in refused]

    def list(self) -> dict[Key, KernelEntry]:
        out: dict[Key, KernelEntry] = {}
        for jail, _, set_name in self._sets():
            proc = self._run("save", set_name, check=False)
            if proc.returncode != 0:
                if "does not exist" in proc.stderr:
                    continue  # missing set: ensure() recreates it
                raise BackendError(f"ipset save {set_name}: {proc.stderr.strip()}")
            for target, timeout in parse_save(proc.stdout, set_name).items():
                out[(jail, target)] = KernelEntry(jail, target, timeout)
        return out

    def uninstall(self) -> builtins.list[str]:
        removed = self.xt.uninstall_chains()
        for _, _, set_name in self._sets():
            if self.header(set_name) is not None:
                self._run("destroy", set_name)
                removed.append(f"set {set_name}")
        return removed

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for _, _, set_name in self._sets():
            head = self.header(set_name)
            if head is None or not head.maxelem:
                continue
            fill = head.entries / head.maxelem
            out[f"set_fill_ratio:{set_name}"] = fill
            if fill >= self.settings.alarm_ratio:
                log.warning(
                    "set %s is %.0f%% full (%d of maxelem %d): raise enforcer.set_maxelem",
                    set_name,
                    fill * 100,
                    head.entries,
                    head.maxelem,
                )
        return out

    def show(self) -> str:
        chains = [self.chain_name(j.name) for j in self.jails]
        parts = [self.headline()]
        for family in FAMILIES:
            parts.append(f"-- IPv{family} (iptables-legacy):")
            parts.append(self.xt.legacy_listing(family, chains))
        for _, _, set_name in self._sets():
            proc = self._run("list", set_name, check=False)
            parts.append(proc.stdout.strip() if proc.returncode == 0 else f"(no set {set_name})")
        return "\n".join(parts)
