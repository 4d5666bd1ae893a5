"""The ``fleet2ban`` command: one module per group of sub-commands, assembled in :mod:`.main`."""
