# shellcheck shell=bash disable=SC2154
# Shared by the test environment scripts (sourced, not run): settings, messages, apt.
# The caller sets `root` (the checkout) and `me` (the name its messages start with).

# settings.env: KEY=VALUE lines; the environment wins.
while IFS='=' read -r key value; do
    case "$key" in '' | \#*) continue ;; esac
    if [ -z "${!key:-}" ]; then export "$key=$value"; fi
done <"$root/testenv/settings.env"

say() { echo "$me: $*" >&2; }
die() { echo "$me: error: $*" >&2; exit 1; }

apt_updated=""
# apt_install PACKAGE...: Debian packages, as root; apt itself names the archive.
apt_install() {
    [ "$(id -u)" = 0 ] || die "missing $*; install it (apt-get install $*) or run this as root"
    command -v apt-get >/dev/null || die "missing $* and no apt-get to install it"
    if [ -z "$apt_updated" ]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        apt_updated=1
    fi
    say "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# apt_install_quiet_services PACKAGE...: as apt_install, but the packages' maintainer
# scripts start no system service (an sshd on port 22 of every interface, say): the test
# environment runs its own instances on loopback.
apt_install_quiet_services() {
    local policy=/usr/sbin/policy-rc.d
    if [ -e "$policy" ]; then apt_install "$@"; return; fi
    printf '#!/bin/sh\n# pytest-containers testenv: no service starts while it installs packages\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    local status=0
    apt_install "$@" || status=$?
    rm -f "$policy"
    return "$status"
}

# debian_mirror: the Debian archive this machine's apt uses (the first URI of a release
# suite signed by Debian's archive key, else of the suite we debootstrap), unless
# TESTENV_DEBIAN_MIRROR says otherwise.
debian_mirror() {
    if [ -n "${TESTENV_DEBIAN_MIRROR:-}" ]; then echo "$TESTENV_DEBIAN_MIRROR"; return; fi
    local codename
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    local files=()
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] && files+=("$f")
    done
    [ ${#files[@]} -gt 0 ] || die "no apt sources to take the Debian mirror from; set TESTENV_DEBIAN_MIRROR"
    local mirror
    mirror=$(debian_mirror_in "$codename" "${files[@]}")
    [ -n "$mirror" ] || die "found no Debian archive in the apt sources (${files[*]}); set TESTENV_DEBIAN_MIRROR"
    echo "$mirror"
}

# debian_mirror_in CODENAME FILE...: the mirror those apt source files name, or nothing.
debian_mirror_in() {
    local codename=$1; shift
    # Each entry as "URI<TAB>SUITES<TAB>SIGNED-BY", from deb822 stanzas and one-line deb lines.
    awk -v suite="$TESTENV_DEBIAN_SUITE" -v codename="$codename" '
        function flush() {
            if (uris != "" && types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no") {
                n = split(uris, u, /[ \t]+/)
                for (i = 1; i <= n; i++) if (u[i] != "") entry(u[i], suites, signed)
            }
            uris = ""; suites = ""; signed = ""; types = ""; enabled = ""
        }
        function entry(uri, suites, signed,    s, m, j, release) {
            if (uri !~ /^(https?|file):/) return
            m = split(suites, s, /[ \t]+/)
            release = 0
            for (j = 1; j <= m; j++) {
                if (s[j] == suite || s[j] == codename) release = 2
                else if (s[j] != "" && s[j] !~ /-/ && release == 0) release = 1
            }
            if (release == 0) return
            if (signed ~ /debian-archive-keyring/ && first_signed == "") first_signed = uri
            if (release == 2 && first_suite == "") first_suite = uri
        }
        FNR == 1 { flush() }
        /^[ \t]*#/ { next }
        FILENAME ~ /\.sources$/ {
            if ($0 ~ /^[ \t]*$/) { flush(); next }
            key = tolower($1); sub(/:$/, "", key)
            value = $0; sub(/^[^:]*:[ \t]*/, "", value)
            if (key == "types") types = value
            else if (key == "uris") uris = value
            else if (key == "suites") suites = value
            else if (key == "signed-by") signed = value
            else if (key == "enabled") enabled = value
            next
        }
        $1 == "deb" {
            line = $0; opts = ""
            if (match(line, /\[[^]]*\]/)) { opts = substr(line, RSTART, RLENGTH); line = substr(line, 1, RSTART - 1) substr(line, RSTART + RLENGTH) }
            split(line, w, /[ \t]+/)
            entry(w[2], w[3], opts)
        }
        END {
            flush()
            if (first_signed != "") print first_signed
            else if (first_suite != "") print first_suite
        }' "$@"
}

# debian_tarball TARBALL PACKAGE...: a minimal Debian $TESTENV_DEBIAN_SUITE root file system
# with those packages, debootstrap'ed once and kept as TARBALL (needs root and debootstrap).
debian_tarball() {
    local tarball=$1; shift
    [ -s "$tarball" ] && return
    [ "$(id -u)" = 0 ] || die "debootstrap needs root to make $tarball"
    local mirror includes log
    mirror=$(debian_mirror)
    includes=$(IFS=,; echo "$*")
    log="${tarball%.tar}.debootstrap.log"
    say "debootstrap $TESTENV_DEBIAN_SUITE with $includes from $mirror (about a minute, cached in $tarball)"
    local target
    target=$(mktemp -d)
    debootstrap --variant=minbase --include="$includes" "$TESTENV_DEBIAN_SUITE" "$target" \
        "$mirror" >"$log" 2>&1 \
        || { tail -n 20 "$log" >&2; rm -rf "$target"; die "debootstrap failed (log: $log)"; }
    rm -rf "$target"/var/cache/apt/archives/*.deb "$target"/var/lib/apt/lists/*
    tar -C "$target" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$target"
}

# debian_rootfs_tarball TARBALL PREPARE PACKAGES [PATH-EXCLUDE...]: as debian_tarball, but
# made with mmdebstrap, whose apt resolves a large package set in seconds where
# debootstrap's own resolver takes a minute; PACKAGES is a comma-separated list. dpkg
# leaves out documentation, manual pages, translations and the files that match the
# PATH-EXCLUDE patterns (dpkg's --path-exclude), and the function PREPARE gets the root
# file system's directory before it is packed.
debian_rootfs_tarball() {
    local tarball=$1 prepare=$2 packages=$3; shift 3
    [ -s "$tarball" ] && return
    [ "$(id -u)" = 0 ] || die "mmdebstrap needs root to make $tarball"
    local mirror log target
    mirror=$(debian_mirror)
    log="${tarball%.tar}.mmdebstrap.log"
    local options=(
        --variant=minbase --mode=root --include="$packages"
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
    )
    local pattern
    for pattern in "$@"; do options+=(--dpkgopt="path-exclude=$pattern"); done
    say "mmdebstrap $TESTENV_DEBIAN_SUITE with $packages from $mirror (a minute or two, cached in $tarball)"
    target=$(mktemp -d)
    mmdebstrap "${options[@]}" "$TESTENV_DEBIAN_SUITE" "$target" "$mirror" >"$log" 2>&1 \
        || { tail -n 20 "$log" >&2; rm -rf "$target"; die "mmdebstrap failed (log: $log)"; }
    # In a shell of its own, so that its first failing command stops it (a function called
    # where its failure is handled runs without errexit).
    bash -euo pipefail -c "$(declare -f "$prepare"); $prepare \"\$1\"" "$prepare" "$target" \
        || { rm -rf "$target"; die "preparing the root file system for $tarball failed"; }
    tar -C "$target" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$target"
}
