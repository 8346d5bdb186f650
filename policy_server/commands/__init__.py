"""The ``policy-server`` command: one module per command group."""
