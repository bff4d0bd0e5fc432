#!/bin/sh
# Stand-in clean-up script used by the parity corpus.
set -eu
echo "cleaning up"
