#!/bin/sh
# Stand-in provisioning script used by the parity corpus.
set -eu
echo "setting up"
