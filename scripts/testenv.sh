#!/usr/bin/env bash
# Makes the test environment on this machine, idempotently and quickly on a second run:
#   - a Docker engine (the one that answers, else dockerd, installing docker.io if root);
#   - a registry (Debian's docker-registry) as a host process on 127.0.0.1, its storage
#     and access log under TESTENV_DIR;
#   - seed images in that registry under Docker Hub names: a FROM-scratch static busybox
#     and redis-server on a debootstrap'ed Debian base.
# Prints the environment variables the tests and examples read, as `export` lines.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

me=testenv
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

mkdir -p "$TESTENV_DIR"

ensure_tools() {
    local missing=()
    command -v curl >/dev/null || missing+=(curl)
    command -v docker >/dev/null || missing+=(docker.io)
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    # busybox-static's binary; a dynamic busybox would not run FROM scratch.
    dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
    command -v htpasswd >/dev/null || missing+=(apache2-utils)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

ensure_engine() {
    if engine_answers; then return; fi
    [ -z "${DOCKER_HOST:-}" ] || die "DOCKER_HOST=$DOCKER_HOST does not answer (docker info)"
    [ "$(id -u)" = 0 ] || die "no Docker engine answers on /var/run/docker.sock; start one (dockerd) or run this as root"
    say "starting dockerd (log: $TESTENV_DIR/dockerd.log)"
    setsid nohup dockerd >>"$TESTENV_DIR/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
        if engine_answers; then return; fi
        sleep 0.5
    done
    tail -n 20 "$TESTENV_DIR/dockerd.log" >&2 || true
    die "dockerd did not answer within 60 s"
}

registry_url="http://$TESTENV_REGISTRY"
answers() { curl -sS -m 2 -o /dev/null "http://$1/v2/" 2>/dev/null; }

# start_registry NAME ADDRESS [AUTH-YAML]: a docker-registry host process on ADDRESS, its
# storage under TESTENV_DIR/NAME and its access log in TESTENV_DIR/NAME.log.
start_registry() {
    local name=$1 address=$2 auth=${3:-}
    if answers "$address"; then return; fi
    local dir="$TESTENV_DIR/$name"
    mkdir -p "$dir/data"
    cat >"$dir/config.yml" <<YAML
version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $address
  secret: pytest-containers-testenv
$auth
YAML
    say "starting docker-registry on $address (log: $TESTENV_DIR/$name.log)"
    setsid nohup docker-registry serve "$dir/config.yml" >>"$TESTENV_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$TESTENV_DIR/$name.pid"
    for _ in $(seq 1 100); do
        if answers "$address"; then return; fi
        sleep 0.1
    done
    tail -n 20 "$TESTENV_DIR/$name.log" >&2 || true
    die "docker-registry did not answer on $address"
}

ensure_registry() {
    start_registry registry "$TESTENV_REGISTRY"
    # Credentials nobody is given: every pull from it is refused as unauthorized.
    local htpasswd="$TESTENV_DIR/auth-registry.htpasswd"
    [ -s "$htpasswd" ] || htpasswd -Bbn pytest-containers "$(head -c 18 /dev/urandom | base64)" >"$htpasswd"
    start_registry auth-registry "$TESTENV_AUTH_REGISTRY" "auth:
  htpasswd:
    realm: pytest-containers-testenv
    path: $htpasswd"
}

# True when every tag is in the registry. Reads the tag list, not the manifests, so
# that the access log's manifest lines count only real pulls.
registry_has_tags() {
    local repo=$1; shift
    local tags
    tags=$(curl -fsS -m 5 "$registry_url/v2/$repo/tags/list" 2>/dev/null) || return 1
    for tag in "$@"; do
        case "$tags" in *"\"$tag\""*) ;; *) return 1 ;; esac
    done
}

push_tags() {
    local image=$1 repo=$2; shift 2
    for tag in "$@"; do
        docker tag "$image" "$TESTENV_REGISTRY/$repo:$tag"
        docker push -q "$TESTENV_REGISTRY/$repo:$tag" >/dev/null
        docker rmi -f "$TESTENV_REGISTRY/$repo:$tag" >/dev/null
    done
    docker rmi -f "$image" >/dev/null 2>&1 || true
}

seed_busybox() {
    # shellcheck disable=SC2086
    if registry_has_tags "$TESTENV_BUSYBOX_REPO" $TESTENV_BUSYBOX_TAGS; then return; fi
    say "building the busybox seed image"
    local ctx
    ctx=$(mktemp -d)
    mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp" "$ctx/rootfs/root"
    cp /bin/busybox "$ctx/rootfs/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$ctx/rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$ctx/rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$ctx/rootfs/etc/group"
    cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY rootfs/ /
ENV PATH=/bin
CMD ["sh"]
DOCKERFILE
    local image=pytest-containers-testenv/busybox:seed
    DOCKER_BUILDKIT=0 docker build -q -t "$image" "$ctx" >/dev/null 2>&1 || { rm -rf "$ctx"; die "building the busybox image failed"; }
    rm -rf "$ctx"
    # shellcheck disable=SC2086
    push_tags "$image" "$TESTENV_BUSYBOX_REPO" $TESTENV_BUSYBOX_TAGS
}

seed_redis() {
    # shellcheck disable=SC2086
    if registry_has_tags "$TESTENV_REDIS_REPO" $TESTENV_REDIS_TAGS; then return; fi
    local tarball="$TESTENV_DIR/debian-$TESTENV_DEBIAN_SUITE-redis.tar"
    debian_tarball "$tarball" redis-server
    say "importing the redis seed image"
    local image=pytest-containers-testenv/redis:seed
    docker import \
        --change 'CMD ["redis-server", "--protected-mode", "no", "--save", ""]' \
        --change 'EXPOSE 6379' \
        --change 'WORKDIR /var/lib/redis' \
        "$tarball" "$image" >/dev/null
    # shellcheck disable=SC2086
    push_tags "$image" "$TESTENV_REDIS_REPO" $TESTENV_REDIS_TAGS
}

ensure_tools
ensure_engine
ensure_registry
seed_busybox
seed_redis

cat <<ENV
export TESTENV_REGISTRY=$TESTENV_REGISTRY
export TESTENV_AUTH_REGISTRY=$TESTENV_AUTH_REGISTRY
export TESTENV_DIR=$TESTENV_DIR
export PYTEST_CONTAINERS_MIRROR=$TESTENV_REGISTRY
ENV
