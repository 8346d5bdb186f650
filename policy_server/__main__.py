"""``python -m policy_server`` is the same as the ``policy-server`` command."""

from .cli import main

raise SystemExit(main())
