# Sourced by the scripts that install what they need from Debian (scripts/test.sh,
# scripts/release-tools.sh, tests/cluster/setup.sh, tests/systemd-boot/node.sh): installs the
# packages named as arguments (nothing when none are named), as root only.
apt_install() {
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "${0##*/}: missing $*: run as root, or install them first" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
