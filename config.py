# pyinfra config, loaded once before the inventory and before any connection.
from pyinfra import state

from glmfleet.imagecache.ops import default_mirror
from glmfleet.runctx import install_callbacks
from glmfleet.service.apikey import resolve as resolve_api_key
from glmfleet.weights.manifest import revision_hints

# The deploy is written against this pyinfra; another version may change facts or flags.
REQUIRE_PYINFRA_VERSION = "==3.10.0"

# Failure policy: a host that fails (preflight or an operation) is dropped and the rest of
# the fleet goes on. Without -y pyinfra asks before continuing past a failed host.
FAIL_PERCENT = None

# Validate every host's settings before the first connection (then resolve api_key =
# "generate" to the fleet's stored key; GPU hosts without a registry_mirror pull through the
# inventory's image cache; a missing model_revision names the Hub's head commit); print the
# summary at the end.
install_callbacks(state, settings_hooks=[resolve_api_key, lambda s: default_mirror(state, s)],
                  error_hints=[revision_hints])
