"""The ways a rendered notice is delivered: log, webhook, e-mail, SMS gateway, command."""
