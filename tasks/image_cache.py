"""Stage 'image_cache': the site's copy of the serving image, on the hosts of the
`image_cache` inventory group (glmfleet/roles.py).

Runs right after preflight, so the copy from upstream (detached) runs while Docker is
installed and the weights download; every GPU host's registry_mirror defaults to this cache
and its background pull starts once the copy is done (glmfleet/imagecache/plan.py says why a
copy and not a pull-through proxy).
The stage itself: glmfleet.imagecache.registry (a pyinfra deploy; this file only calls it).
"""

from glmfleet import imagecache

imagecache.registry()
