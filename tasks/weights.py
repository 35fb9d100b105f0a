"""Stage 'weights': not implemented yet.

Reported as NOT IMPLEMENTED in the fleet summary (and loudly in the log) so a run never
looks like it did work it did not do.
"""

from pyinfra import host, logger

from glmfleet import runctx

logger.warning(f"{host.name}: stage 'weights' is not implemented yet: skipped, nothing changed")
runctx.record(host.name, "weights", "NOT IMPLEMENTED", "stage not built yet")
