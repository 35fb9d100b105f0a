"""Stage 'gateway': HAProxy in front of the fleet, on the hosts of the `gateway` group."""
