#!/bin/sh
# Prepare this machine (the controller) to run the simulated test fleet:
# install the host tools it needs and build the cached Debian host images (Debian 12 and 13
# with systemd, Debian 12 without an init system) and the apt repository double (Debian 12's
# and 13's Docker binaries, fetched with a private apt state from this machine's mirror).
# Idempotent and quick when already done. Root only; Debian/Ubuntu only.
#
#   sudo testbed/setup.sh            # then: python -m testbed up -n 3 --inventory inv.py
set -eu
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

if [ "$(id -u)" != 0 ]; then
    echo "testbed/setup.sh: must run as root (namespaces, mounts, veths)" >&2
    exit 1
fi

# command -> package; only missing ones are installed, so a ready machine costs no apt call.
# gcc builds the NVML double; shellcheck and docker-compose (v1) check the box kit's scripts
# and compose file; gpg signs the apt repository double; docker-registry (the distribution
# registry v2) and openssl serve the serving-image double over TLS from a test CA; aria2 is
# the weights fan-out's downloader (its unit tests and bench/fanout.py run it here).
missing="${TESTBED_FORCE_INSTALL:+ debootstrap}"  # force: exercise the install path
for pair in debootstrap:debootstrap apt-cacher-ng:apt-cacher-ng sshd:openssh-server \
            ssh:openssh-client ssh-keygen:openssh-client ip:iproute2 unshare:util-linux \
            nsenter:util-linux ps:procps gcc:gcc shellcheck:shellcheck \
            docker-compose:docker-compose gpg:gnupg docker-registry:docker-registry \
            openssl:openssl aria2c:aria2; do
    cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "testbed/setup.sh: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    # Without systemd, package scripts start services right away; keep the stock
    # apt-cacher-ng (listening on *:3142) from starting: the fleet runs its own.
    made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing debian-archive-keyring
    if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; trap - EXIT; fi
fi

# The fleet mounts overlayfs; make sure the module is there (built in on most kernels).
grep -qw overlay /proc/filesystems || modprobe overlay

repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-"$repo/.venv/bin/python"}
[ -x "$py" ] || py=python3
cd "$repo"
"$py" -m testbed rootfs
exec "$py" -c 'from testbed.doubles.aptrepo import build; print(build().dir)'
