"""From a queued notice to a message delivered: the worker, the delivery rules (recipients, quiet
hours, per-account limits), the fleet-wide breaker, the geo-data guard, rendering and templates,
and the channels."""
