"""fleet2ban: fail2ban for a fleet of AMPS servers, on Kafka."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fleet2ban")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+src"
