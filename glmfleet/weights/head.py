"""Print the commit a Hub repo's main branch points at now, to check and pin as model_revision:

    python -m glmfleet.weights.head [REPO]

REPO defaults to model_repo in group_data/all.py; HF_ENDPOINT (a mirror, or the simulated
site's Hub) and HF_TOKEN are honoured. The deploy never pins a branch by itself.
"""

from __future__ import annotations

import os
import sys

from glmfleet.settings import load_defaults
from glmfleet.weights.manifest import ManifestError, head_commit


def main(argv: list[str]) -> int:
    repo = argv[0] if argv else load_defaults()["model_repo"]
    endpoint = os.environ.get("HF_ENDPOINT") or load_defaults()["hf_endpoint"]
    try:
        print(head_commit(repo, endpoint, os.environ.get("HF_TOKEN")))
    except ManifestError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
