"""What runs inside ``serve``: the aiohttp application, the Dovecot endpoint and the report path,
API authentication, metrics and health, systemd's notify protocol, and several processes."""
