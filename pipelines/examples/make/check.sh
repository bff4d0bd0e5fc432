#!/bin/sh
# The smoke test: runs in a machine booted from a captured image, and fails
# unless the image is the one that was built (ROLE and VERSION are expected).
set -eu
fail() { echo "check: FAIL: $*" >&2; exit 1; }
[ -f /etc/example-version ] || fail "no /etc/example-version"
[ "$(cat /etc/example-version)" = "$VERSION" ] || fail "version $(cat /etc/example-version), expected $VERSION"
[ "$(cat /opt/example/role)" = "$ROLE" ] || fail "role $(cat /opt/example/role), expected $ROLE"
[ ! -e /tmp/example-version ] || fail "/tmp was not emptied (sysprep)"
echo "check: ok: $ROLE $VERSION booted from its image"
