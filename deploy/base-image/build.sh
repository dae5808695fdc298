#!/usr/bin/env bash
# The base of the bento image where no registry can be pulled from: Debian bookworm (minbase) with Python 3.11,
# uv, and the packages the Containerfile BentoML generates installs with apt (so that step changes nothing).
# gan_enhance.serving.container runs it when no base image of this folder's content hash exists, then builds
# Containerfile (FROM scratch, ADD the tarball) with the container tool present:
#   build.sh ROOTFS.tar UV_BINARY CA_DIR SOURCES
# ROOTFS.tar: where the root filesystem goes; UV_BINARY: copied to /usr/local/bin/uv (the Containerfile runs
# `command -v uv || pip install uv`, and pip refuses Debian's externally-managed Python); CA_DIR: extra CA
# certificates (*.crt) trusted inside, for a TLS-inspecting proxy between the build and the package index (may be
# empty); SOURCES: the apt sources (a deb822 .sources file or a mirror URL).
set -euo pipefail
rootfs=$1 uv=$2 ca_dir=$3 sources=$4

packages=(
    python3            # 3.11 in bookworm: the bento's python_version
    passwd             # useradd/groupadd: the Containerfile creates the non-root user `bentoml`
    ca-certificates
    # installed by the Containerfile's first RUN (BentoML's default for distro debian); present here, it is a no-op
    gnupg2 bash build-essential git
)
certs=("$ca_dir"/*.crt)
here=$(cd "$(dirname "$0")" && pwd)
hooks=(--customize-hook="copy-in $uv /usr/local/bin"
       --customize-hook="copy-in $here/apt-slim.conf /etc/apt/apt.conf.d"
       # made before apt-slim.conf switched them off; mmdebstrap's clean-up no longer sees them
       --customize-hook='rm -f "$1"/var/cache/apt/pkgcache.bin "$1"/var/cache/apt/srcpkgcache.bin')
if [ -e "${certs[0]}" ]; then
    hooks+=(--customize-hook="copy-in ${certs[*]} /usr/local/share/ca-certificates"
            --customize-hook='chroot "$1" update-ca-certificates')
fi
# no documentation, manual pages or translations in the image (copyright files stay)
mmdebstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "${hooks[@]}" bookworm "$rootfs" "$sources"
