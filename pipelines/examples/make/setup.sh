#!/bin/sh
# Runs in the machine being built (ROLE is web or db): installs the version
# the Makefile uploaded, after checking it looks like one.
set -eu
version=$(cat /tmp/example-version)
case $version in
  "" | *[!0-9.]* | .* | *.) echo "setup: '$version' is not a version (digits and dots)" >&2; exit 1 ;;
esac
mkdir -p /opt/example
echo "$version" > /etc/example-version
echo "$ROLE" > /opt/example/role
echo "setup: $ROLE $version"
