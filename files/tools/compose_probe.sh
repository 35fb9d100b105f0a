#!/bin/sh
# The kit's one compose probe, used by kitlib.sh on the box and by the deploy's host facts:
# prints this host's compose command ("docker compose" or "docker-compose"), status 1 when
# there is none. By version output, not exit status: docker-compose 1.29 exits 0 even on
# options it does not know.
if docker compose version 2>/dev/null | grep -Eq '[Cc]ompose version v?[0-9]+[.]'; then
    echo 'docker compose'
elif docker-compose version --short 2>/dev/null | grep -Eq '^v?[0-9]+[.][0-9]+'; then
    echo docker-compose
else
    exit 1
fi
