"""The local fleet for ``fleet2ban dev`` and the end-to-end tests: namespaces, simulated AMPS hosts, traffic."""
