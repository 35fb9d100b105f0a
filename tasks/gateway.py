"""Stage 'gateway': HAProxy in front of the fleet, on the hosts of the `gateway` group.

Runs after the GPU stages (deploy.py includes it last), so the admin states reflect this
run's results. The config is rendered from the inventory (every GPU host, its address and
sizing), so --dry shows whether it would change; see glmfleet/gateway/plan.py for the
choices in it (leastconn, maxconn from max_num_seqs, /health checks, timeouts, retries).
The stage itself: glmfleet.gateway.haproxy (a pyinfra deploy; this file only calls it).
"""

from glmfleet import gateway

gateway.haproxy()
