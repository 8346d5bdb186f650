"""policy-server: login-origin notices for Dovecot through its auth-policy HTTP protocol."""

__version__ = "0.1.0"
