# Installs the Debian packages kiln needs, only those missing.
# Usage: . pipelines/lib/deps.sh; kiln_install_deps build [test]

kiln_packages_build="meson ninja-build g++ pkg-config python3
  libboost-program-options-dev libboost-test-dev libboost-filesystem-dev
  libboost-dev rapidjson-dev libarchive-dev libssh2-1-dev libssl-dev"
kiln_packages_build="$kiln_packages_build qemu-system-x86 qemu-utils"
kiln_packages_test="python3-cram packer clang libclang-rt-14-dev
  openssh-server openssh-client genisoimage libarchive-tools curl
  ansible-core bc procps vagrant zstd lz4 unzip jq e2fsprogs xz-utils openssl make"

kiln_install_deps() {
  local want="" missing="" pkg group
  for group in "$@"; do
    case $group in
      build) want="$want $kiln_packages_build" ;;
      test) want="$want $kiln_packages_test" ;;
    esac
  done
  for pkg in $want; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' ||
      missing="$missing $pkg"
  done
  [ -z "$missing" ] && return 0
  echo "kiln: installing Debian packages:$missing" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "kiln: need root (or sudo) to install:$missing" >&2; return 1; }
    sudo=sudo
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >&2
}

# Configures (once) and builds the tree in build/.
kiln_build() {
  if [ ! -f build/build.ninja ]; then
    meson setup build --buildtype=debugoptimized -Dwerror=true >&2
  fi
  meson compile -C build >&2
}
