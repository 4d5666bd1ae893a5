"""The whole fleet on one machine: a local Apache Kafka, the processor, and simulated AMPS hosts.

Each simulated host is a network namespace (as root) with a logon service on 9007 writing a genuine AMPS
ban log, a shipper following that log and an enforcer applying bans to the namespace's own firewall
(ipset backend). Client namespaces (attackers, a legitimate client) sit on the same bridge. Every
component is a separate process, as in production; the shippers run in the root namespace (they only
read a file), the enforcers inside their host (they reach the broker through a relay the fleet opens at
the same ``127.0.0.1:PORT`` inside the namespace, see :meth:`fleet2ban.dev.netns.Fleet.forward`).

Without root there are no namespaces: the logon services listen on distinct loopback addresses
(127.0.1.N), clients use source addresses 127.0.2.M, and enforcers run in dry-run (their safety rails
refuse loopback bans, which they report as ``skipped``).

Used by ``fleet2ban dev``, the end-to-end test and the time-to-ban benchmark.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fleet2ban.dev import netns
from fleet2ban.dev.supervisor import Child, Supervisor, fleet2ban_cmd, python_module
from fleet2ban.kafka import Cluster, ensure_topics, resolve
from fleet2ban.kafka.local import LocalKafka
from fleet2ban.settings import KafkaSettings
from fleet2ban.waiting import wait_for

log = logging.getLogger(__name__)

AMPS_PORT = 9007


@dataclass
class DevOptions:
    hosts: int = 3
    attackers: int = 1
    workdir: Path | None = None
    bantime: float = 120.0
    maxretry: int = 20
    findtime: float = 10.0
    recidive: int = 0
    """A repeat-offender jail (``source: bans``) banning an address banned this many times within
    ``recidive_findtime`` for ``recidive_bantime`` (0: none)."""
    recidive_findtime: float = 3600.0
    recidive_bantime: float = 600.0
    backend: str | None = None
    """ipset as root, dryrun otherwise, unless set."""
    netns: bool | None = None
    """Network namespaces (None: when available, i.e. as root)."""
    topic_prefix: str = "fleet2ban."
    partitions: int = 3
    """Partitions per topic (the dev fleet runs one processor; more would let it scale out)."""
    bootstrap: str | None = None
    """An existing Kafka cluster to use (None: start a local Apache Kafka of ``kafka_nodes`` nodes)."""
    kafka_nodes: int = 1
    replication_factor: int | None = None
    """Of the fleet's topics (None: 3 on a local 3-node cluster, else 1)."""
    heartbeat_interval_s: float = 1.0
    reconcile_interval_s: float = 5.0
    extra_settings: dict[str, Any] = field(default_factory=dict)
    sim_roll_bytes: int | None = None
    """The simulated AMPS services roll their log over at this size (None: their default, about 1 MB).
    A benchmark that writes the log itself sets it high and rolls the file over on its own."""


@dataclass(frozen=True)
class SimHost:
    """One simulated AMPS host: where its service listens and where its log is."""

    name: str
    address: str
    address6: str | None
    log_path: Path
    netns: str | None


@dataclass(frozen=True)
class Client:
    """A client machine (attacker or legitimate): a namespace, or a loopback source address."""

    name: str
    address: str
    netns: str | None


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class DevFleet:
    """Start with :meth:`start` (or as a context manager); :meth:`close` removes everything it made."""

    def __init__(self, options: DevOptions | None = None) -> None:
        self.opts = options or DevOptions()
        self._own_workdir = self.opts.workdir is None
        self.workdir = self.opts.workdir or Path(tempfile.mkdtemp(prefix="fleet2ban-dev-"))
        available = netns.unavailable_reason() is None
        self.use_netns = available if self.opts.netns is None else (self.opts.netns and available)
        self.backend = self.opts.backend or ("auto" if self.use_netns else "dryrun")
        self.supervisor = Supervisor(self.workdir)
        self.broker: LocalKafka | None = None
        self.bootstrap: str | None = None
        self.nsfleet: netns.Fleet | None = None
        self.hosts: list[SimHost] = []
        self.attackers: list[Client] = []
        self.legit: Client | None = None
        self.config_path = self.workdir / "fleet2ban.yaml"
        self.cluster: Cluster | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> DevFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> DevFleet:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        if self.use_netns:
            netns.cleanup_stale("dev")
        if self.opts.bootstrap:
            self.bootstrap = self.opts.bootstrap
        else:
            self.broker = LocalKafka(self.opts.kafka_nodes, data_dir=self.workdir / "kafka").start()
            self.bootstrap = self.broker.bootstrap
        kafka = KafkaSettings(
            bootstrap_servers=self.bootstrap,
            topic_prefix=self.opts.topic_prefix,
            partitions=self.opts.partitions,
            replication_factor=self.replication_factor,
        )
        self.cluster = resolve(kafka)
        ensure_topics(self.cluster)
        self._layout()
        self._write_config()
        self.supervisor.start("processor", fleet2ban_cmd("--config", str(self.config_path), "processor"))
        for host in self.hosts:
            self._start_sim(host)
            self.start_shipper(host.name)
            self.start_enforcer(host.name)

    def _layout(self) -> None:
        n_hosts, n_att = self.opts.hosts, self.opts.attackers
        if self.use_netns:
            self.nsfleet = netns.Fleet(tag="dev", subnet4="10.200.0.0/24", subnet6="fd00:200::/64").start()
            for i in range(1, n_hosts + 1):
                h = self.nsfleet.add_host(f"h{i}", index=i)
                self.hosts.append(SimHost(f"h{i}", h.ipv4, h.ipv6, self._log_path(f"h{i}"), h.ns))
            for i in range(1, n_att + 1):
                a = self.nsfleet.add_host(f"att{i}", index=100 + i)
                self.attackers.append(Client(f"att{i}", a.ipv4, a.ns))
            lg = self.nsfleet.add_host("legit", index=200)
            self.legit = Client("legit", lg.ipv4, lg.ns)
        else:
            for i in range(1, n_hosts + 1):
                self.hosts.append(SimHost(f"h{i}", f"127.0.1.{i}", None, self._log_path(f"h{i}"), None))
            self.attackers = [Client(f"att{i}", f"127.0.2.{i}", None) for i in range(1, n_att + 1)]
            self.legit = Client("legit", "127.0.3.1", None)

    def _log_path(self, host: str) -> Path:
        return self.workdir / "hosts" / host / "ban.log"

    @property
    def replication_factor(self) -> int:
        if self.opts.replication_factor is not None:
            return self.opts.replication_factor
        return self.broker.replication_factor if self.broker is not None else 1

    def _write_config(self) -> None:
        assert self.bootstrap is not None
        settings: dict[str, Any] = {
            "kafka": {
                "bootstrap_servers": self.bootstrap,
                "topic_prefix": self.opts.topic_prefix,
                "partitions": self.opts.partitions,
                "replication_factor": self.replication_factor,
            },
            "jails": [
                {
                    "name": "amps",
                    "maxretry": self.opts.maxretry,
                    "findtime": self.opts.findtime,
                    "bantime": self.opts.bantime,
                    "ports": [AMPS_PORT],
                },
                *self._recidive_jail(),
            ],
            "enforcer": {
                "backend": self.backend,
                "reconcile_interval_s": self.opts.reconcile_interval_s,
                "allow_loopback": not self.use_netns,  # without namespaces the clients are 127.0.0.x
            },
            "metrics": {"heartbeat_interval_s": self.opts.heartbeat_interval_s},
            "state_dir": str(self.workdir / "state"),
            "log": {"level": "INFO"},
        }
        settings = _merge(settings, self.opts.extra_settings)
        self.config_path.write_text(yaml.safe_dump(settings, sort_keys=False))

    def _recidive_jail(self) -> list[dict[str, Any]]:
        if not self.opts.recidive:
            return []
        return [
            {
                "name": "recidive",
                "source": "bans",
                "maxretry": self.opts.recidive,
                "findtime": self.opts.recidive_findtime,
                "bantime": self.opts.recidive_bantime,
                "ports": [AMPS_PORT],
            }
        ]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.supervisor.stop_all()
        if self.nsfleet is not None:
            self.nsfleet.teardown()
            self.nsfleet = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self._own_workdir and os.environ.get("FLEET2BAN_DEV_KEEP") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ----------------------------------------------------------------------------------- components

    def host(self, name: str) -> SimHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def _start_sim(self, host: SimHost) -> Child:
        host.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = python_module("fleet2ban.dev.amps_sim", "--log", str(host.log_path), "--port", str(AMPS_PORT))
        if self.opts.sim_roll_bytes is not None:
            argv += ["--roll-bytes", str(self.opts.sim_roll_bytes)]
        if host.netns is None:
            argv += ["--bind", host.address]
        child = self.supervisor.start(f"amps-{host.name}", argv, netns=host.netns)
        wait_for(
            lambda: host.log_path.exists() or not child.alive(), 15, f"the AMPS simulator on {host.name}"
        )
        if not child.alive():
            raise RuntimeError(f"AMPS simulator on {host.name} died:\n{child.tail()}")
        return child

    def start_shipper(self, host: str) -> Child:
        h = self.host(host)
        return self.supervisor.start(
            f"shipper-{host}",
            fleet2ban_cmd(
                "--config",
                str(self.config_path),
                "shipper",
                "--log",
                str(h.log_path),
                "--host",
                host,
                "--from-start",
                "--checkpoint",
                str(self.workdir / "state" / f"shipper-{host}.ckpt"),
            ),
        )

    def start_enforcer(self, host: str) -> Child:
        h = self.host(host)
        assert self.bootstrap is not None
        if h.netns is not None and self.nsfleet is not None:
            # every broker advertises 127.0.0.1:PORT: each port is relayed into the host's namespace
            for addr in self.bootstrap.split(","):
                self.nsfleet.forward(h.netns, int(addr.rpartition(":")[2]))
        return self.supervisor.start(
            f"enforcer-{host}",
            fleet2ban_cmd("--config", str(self.config_path), "enforcer", "--host", host),
            netns=h.netns,
        )

    def child(self, name: str) -> Child:
        return self.supervisor.children[name]

    def kill9(self, name: str) -> None:
        self.child(name).kill9()

    def restart(self, name: str) -> Child:
        """Start a (killed or running) component again with the same command line."""
        child = self.child(name)
        if child.alive():
            child.stop()
        child.restarts += 1
        child.start()
        return child

    # --------------------------------------------------------------------------------------- clients

    def client_argv(
        self,
        client: Client,
        mode: str,
        count: int,
        rate: float = 0.0,
        targets: list[SimHost] | None = None,
        name: str | None = None,
    ) -> list[str]:
        hosts = targets or self.hosts
        argv = python_module(
            "fleet2ban.dev.traffic",
            "--mode",
            mode,
            "--count",
            str(count),
            "--targets",
            ",".join(h.address for h in hosts),
            "--rate",
            str(rate),
        )
        if client.netns is None:
            argv += ["--source", client.address]
        if name:
            argv += ["--name", name]
        return argv

    def run_client(
        self,
        client: Client,
        mode: str,
        count: int,
        rate: float = 0.0,
        targets: list[SimHost] | None = None,
        name: str | None = None,
        timeout: float = 120.0,
    ) -> list[dict[str, Any]]:
        """Run a traffic generator to completion; its attempts, one dict each."""
        argv = self.client_argv(client, mode, count, rate, targets, name)
        if client.netns is not None:
            argv = ["ip", "netns", "exec", client.netns, *argv]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=True).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def popen_client(
        self, client: Client, mode: str, count: int, rate: float = 0.0, name: str | None = None
    ) -> subprocess.Popen[str]:
        argv = self.client_argv(client, mode, count, rate, name=name)
        if client.netns is not None:
            argv = ["ip", "netns", "exec", client.netns, *argv]
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    # ------------------------------------------------------------------------------- benchmark hooks

    def add_client_addresses(self, client: Client, addresses: list[str]) -> None:
        """Give a client's namespace extra IPv4 addresses on the bridge (secondary addresses in the fleet's
        subnet), so that one namespace can play many attackers. Needs namespaces."""
        if client.netns is None or self.nsfleet is None:
            raise RuntimeError("extra client addresses need network namespaces (root)")
        plen = self.nsfleet.subnet4.prefixlen
        for addr in addresses:
            netns.ip("-n", client.netns, "addr", "add", f"{addr}/{plen}", "dev", "eth0")

    def add_sim_host(self, name: str, index: int) -> SimHost:
        """A host namespace on the bridge running only the simulated AMPS service: no shipper, no enforcer
        (for a reference such as fail2ban watching its log). Not one of ``hosts``; removed with the fleet."""
        if self.nsfleet is None:
            raise RuntimeError("an extra simulated host needs network namespaces (root)")
        h = self.nsfleet.add_host(name, index=index)
        host = SimHost(name, h.ipv4, h.ipv6, self._log_path(name), h.ns)
        self._start_sim(host)
        return host

    def can_connect(self, client: Client, host: SimHost, timeout: float = 0.5) -> bool:
        """Whether ``client`` gets a TCP connection to ``host``'s AMPS port now (a ban drops it)."""
        if client.netns is not None:
            return netns.try_connect(client.netns, host.address, AMPS_PORT, timeout) is None
        from fleet2ban.dev.traffic import can_connect

        return can_connect(host.address, AMPS_PORT, timeout, source=client.address)

    # ----------------------------------------------------------------------------------- environment

    def env(self) -> dict[str, str]:
        """Environment for an operator command (``fleet2ban bans list``) against this fleet."""
        return {**os.environ, "FLEET2BAN_CONFIG": str(self.config_path)}

    def describe(self) -> Iterator[str]:
        assert self.bootstrap is not None
        if self.broker is not None:
            yield f"kafka       {self.bootstrap} (local Apache Kafka {self.broker.version}, {len(self.broker.nodes)} node(s))"
        else:
            yield f"kafka       {self.bootstrap}"
        yield f"config      {self.config_path}"
        yield f"firewall    {self.backend}" + ("" if self.use_netns else " (not root: no namespaces)")
        for h in self.hosts:
            yield f"host {h.name:<6} {h.address:<12} log {h.log_path}" + (
                f"  netns {h.netns}" if h.netns else ""
            )
        for c in [*self.attackers, *([self.legit] if self.legit else [])]:
            yield f"client {c.name:<5} {c.address}" + (f"  netns {c.netns}" if c.netns else "")
