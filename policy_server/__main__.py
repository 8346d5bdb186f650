"""``python -m policy_server`` is the same as the ``policy-server`` command."""

from .commands.main import main

raise SystemExit(main())
