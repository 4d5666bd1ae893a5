"""The enforcer: follows the ``bans`` topic and applies it to this host's firewall (DESIGN §4)."""
