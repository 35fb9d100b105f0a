"""Stage 'image_pull': the serving image starts downloading as soon as Docker is up.

A detached `docker pull` (timestamped log: /var/log/glmfleet/image-pull.log on the host), so
the tens of GB of the image come down while the weights download; the service stage waits for
it. Nothing happens when the image is there or a background pull of it already ran
(glmfleet/service/imagepull.py). Behind a registry_mirror the first host pulling the image
through it starts at once, the others when its pull is done: every layer is then in the
site's cache and comes from upstream for that one pull only. Behind the inventory's own image
cache (tasks/image_cache.py) every host starts once the cache's copy from upstream is done.
The stage itself: glmfleet.service.pull_early (a pyinfra deploy; this file only calls it).
"""

from glmfleet import service
from glmfleet.imagecache.ops import copy_wait

service.pull_early(wait_for=copy_wait)
