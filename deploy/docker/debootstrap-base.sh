#!/usr/bin/env bash
# A local stand-in for the Dockerfile's default base image, for machines that reach Debian's mirror but not Docker
# Hub: Debian bookworm (the default base's release) with its Python 3.11, built by debootstrap from the mirror apt
# already uses, imported as TAG (default lpu-serve-base:bookworm). Then:
#     LPU_BASE_IMAGE=lpu-serve-base:bookworm make demo
# Needs root, debootstrap (apt-get install debootstrap) and a running Docker engine; about 5 minutes, ~190 MB.
#
# The host's own extra CA certificates (/usr/local/share/ca-certificates) are trusted inside the image too, and pip
# is pointed at the system bundle: where the host reaches PyPI through a TLS-inspecting proxy, so do the build and
# the server's one-time model fetch.
set -euo pipefail

tag="${1:-lpu-serve-base:bookworm}"
suite=bookworm
# Extra packages on top of minbase: what the Dockerfile expects of a python image (python, venv with pip).
packages=python3,python3-venv,python-is-python3,ca-certificates

mirror_from_apt() {
    # The first Debian mirror in apt's sources (deb822 .sources files first, then one-line .list files).
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
    if [ -z "$uri" ]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list \
            /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

if [ "$(id -u)" -ne 0 ]; then
    echo "$0: debootstrap needs root" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "$0: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
mirror="${DEBIAN_MIRROR:-$(mirror_from_apt)}"

root=$(mktemp -d /var/tmp/lpu-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap $suite from $mirror into $root"
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
    || { tail -n 30 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"

if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
fi
# What the official image leaves out too: package lists, downloaded .debs, docs and man pages.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/usr/share/doc/* "$root"/usr/share/man/*

tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    --message "debootstrap $suite ($packages) from $mirror" \
    - "$tag" >/dev/null
docker image ls "$tag"
