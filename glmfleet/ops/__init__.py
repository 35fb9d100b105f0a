"""pyinfra operations of our stages (they import pyinfra; the decisions they act on are
pure functions elsewhere, e.g. glmfleet.docker_plan)."""
