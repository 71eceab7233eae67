#!/usr/bin/env bash
# Makes the test environment on this machine, idempotently and quickly on a second run:
#   - a Docker engine (the one that answers, else dockerd, installing docker.io if root);
#   - a registry (Debian's docker-registry) as a host process on 127.0.0.1, its storage
#     and access log under TESTENV_DIR;
#   - seed images in that registry under Docker Hub names: a FROM-scratch static busybox,
#     redis-server on a debootstrap'ed Debian base, and postgres, mariadb, rabbitmq, nats
#     and memcached on one mmdebstrap'ed Debian base, each with an entrypoint (in
#     testenv/servers/) that honours the official image's variables.
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
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
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

# The server images: one Debian root file system with all five servers, and an image of
# each with that as its first layer (stored and pushed once) and as its second the files
# under testenv/servers/NAME/ (entrypoint, configuration), its configuration (entrypoint,
# command, environment, ports, volumes, stop signal) testenv/servers/NAME.json, under its
# official name (settings.env: TESTENV_POSTGRES_REPO, TESTENV_POSTGRES_TAGS, ...).
servers=(postgres mariadb rabbitmq nats memcached)
servers_packages=postgresql-15,mariadb-server,rabbitmq-server,nats-server,memcached,locales
# Postgres's JIT compiler (LLVM, and Z3 for LLVM): a fifth of the image, for what only
# long analytical queries use. Without it postgres runs as with jit=off.
servers_excludes=(
    '/usr/lib/*/libLLVM-*.so*' '/usr/lib/*/libz3.so*'
    '/usr/lib/postgresql/*/lib/llvmjit*' '/usr/lib/postgresql/*/lib/bitcode/*'
)

# servers_prepare ROOTFS: the servers as the official images are before their first start:
# no data (their entrypoints make it: no cluster Debian's postinst made, no data directory
# of its mariadb-install-db), no Erlang cookie all containers would share, no pid or log
# files; with the locale the postgres image runs in, /docker-entrypoint-initdb.d, and
# root's Erlang cookie leading to the rabbitmq user's (as in the official image).
servers_prepare() {
    local rootfs=$1
    # Never the machine's own /etc/postgresql and /var/lib/mysql.
    [ -d "$rootfs/var/lib/dpkg" ] && [ "$(cd "$rootfs" && pwd -P)" != / ] || return 1
    rm -rf "$rootfs"/etc/postgresql/15 "$rootfs"/var/lib/postgresql/15
    find "$rootfs"/var/lib/mysql "$rootfs"/var/lib/rabbitmq -mindepth 1 -delete
    find "$rootfs"/run -name '*.pid' -delete
    rm -f "$rootfs"/run/adduser
    find "$rootfs"/var/log -mindepth 2 -type f -delete
    mkdir -p "$rootfs"/docker-entrypoint-initdb.d
    ln -sfn /var/lib/rabbitmq/.erlang.cookie "$rootfs"/root/.erlang.cookie
    chroot "$rootfs" localedef -i en_US -c -f UTF-8 -A /usr/share/locale/locale.alias en_US.UTF-8
}

servers_recipe=$(printf '%s\n' "$TESTENV_DEBIAN_SUITE" "$servers_packages" "${servers_excludes[@]}" \
    "$(declare -f servers_prepare)" | sha256sum | cut -c1-12)
servers_tarball="$TESTENV_DIR/debian-$TESTENV_DEBIAN_SUITE-servers-$servers_recipe.tar"
servers_stamp="$TESTENV_DIR/servers.seeded"

# servers_key: what the server images are made of: the root file system's recipe, how the
# images are put together, testenv/servers/ (but its README) and the names and tags. The
# stamp file holds it once they are in the registry.
servers_key() {
    local name repo tags
    {
        echo "$servers_recipe"
        declare -f seed_servers
        for name in "${servers[@]}"; do
            repo="TESTENV_${name^^}_REPO" tags="TESTENV_${name^^}_TAGS"
            echo "$name ${!repo} ${!tags}"
        done
        tar -C "$root/testenv/servers" --exclude=./README.md --sort=name --mtime=@0 --mode=go-w \
            --owner=0 --group=0 --numeric-owner -cf - .
    } | sha256sum | cut -c1-16
}

servers_in_registry() {
    local name repo tags
    for name in "${servers[@]}"; do
        repo="TESTENV_${name^^}_REPO" tags="TESTENV_${name^^}_TAGS"
        # shellcheck disable=SC2086
        registry_has_tags "${!repo}" ${!tags} || return 1
    done
}

# registry_blob REPO FILE [FROM [DIGEST]]: FILE as a blob of REPO in the registry: there
# already, mounted from the repository FROM, or uploaded. Prints its "digest size".
registry_blob() {
    local repo=$1 file=$2 from=${3:-} digest=${4:-} size location
    [ -n "$digest" ] || digest=sha256:$(sha256sum <"$file" | cut -d' ' -f1)
    size=$(stat -c %s "$file")
    if ! curl -fsS -m 10 -I -o /dev/null "$registry_url/v2/$repo/blobs/$digest" 2>/dev/null \
        && { [ -z "$from" ] || [ "$(curl -sS -m 10 -X POST -o /dev/null -w '%{http_code}' \
            "$registry_url/v2/$repo/blobs/uploads/?mount=$digest&from=$from")" != 201 ]; }; then
        location=$(curl -fsS -m 10 -X POST -D - -o /dev/null "$registry_url/v2/$repo/blobs/uploads/" \
            | tr -d '\r' | awk 'tolower($1) == "location:" { print $2 }')
        case "$location" in /*) location="$registry_url$location" ;; esac
        case "$location" in *\?*) location="$location&digest=$digest" ;; *) location="$location?digest=$digest" ;; esac
        curl -fsS -m 300 -T "$file" -H 'Content-Type: application/octet-stream' -o /dev/null "$location"
    fi
    echo "$digest $size"
}

# The images go to the registry as the registry API has them (blobs, then a manifest per
# tag), not through the engine: `docker load` and `docker push` would take a minute more
# to unpack the base into the engine and to gzip it again, and an image built FROM it with
# a Dockerfile half a minute an instruction where the storage driver diffs the whole file
# system at each commit (fuse-overlayfs). The base layer is compressed once and kept.
seed_servers() {
    local key
    key=$(servers_key)
    if [ "$(cat "$servers_stamp" 2>/dev/null)" = "$key" ] && servers_in_registry; then return; fi
    rm -f "$servers_stamp"
    local old
    for old in "$TESTENV_DIR"/debian-*-servers-*.tar; do
        # A root file system of another recipe, and its blob, would only take room.
        [ "$old" = "$servers_tarball" ] || rm -f "${old%.tar}".*
    done
    debian_rootfs_tarball "$servers_tarball" servers_prepare "$servers_packages" "${servers_excludes[@]}"
    # The base layer's blob, and its "diff-id digest" (of the tar, of the blob).
    local base_blob="${servers_tarball%.tar}.layer.tar.gz" base_ids="${servers_tarball%.tar}.layer.ids"
    if [ ! -s "$base_ids" ]; then
        gzip -1 -n -c "$servers_tarball" >"$base_blob.part"
        mv "$base_blob.part" "$base_blob"
        echo "$(sha256sum <"$servers_tarball" | cut -d' ' -f1) $(sha256sum <"$base_blob" | cut -d' ' -f1)" \
            >"$base_ids"
    fi
    local base_diff_id base_digest
    read -r base_diff_id base_digest <"$base_ids"
    say "pushing the server seed images (${servers[*]}) to the registry"
    local work created architecture
    work=$(mktemp -d)
    created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    architecture=$(dpkg --print-architecture)  # amd64, arm64, ...: Docker's names too
    local name repo_var tags_var repo tag files layer_id base layer config first=""
    for name in "${servers[@]}"; do
        repo_var="TESTENV_${name^^}_REPO" tags_var="TESTENV_${name^^}_TAGS"
        repo=${!repo_var}
        # The second layer: its files, owned by root, entrypoints executable whatever the
        # checkout says, and no entries for their directories (the base's keep their
        # owners and modes).
        files="$work/$name"
        mkdir -p "$files"
        cp -a "$root/testenv/servers/$name/." "$files/"
        if [ -d "$files/usr/local/bin" ]; then chmod 755 "$files"/usr/local/bin/*; fi
        (cd "$files" && find . \! -type d -print0 | LC_ALL=C sort -z \
            | tar --null --no-recursion --owner=0 --group=0 --numeric-owner \
                -cf "$work/$name.tar" -T -)
        layer_id=$(sha256sum <"$work/$name.tar" | cut -d' ' -f1)
        gzip -n "$work/$name.tar"
        printf '{"architecture":"%s","os":"linux","created":"%s","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]},"history":[{"created":"%s","created_by":"mmdebstrap %s with %s (scripts/testenv.sh)"},{"created":"%s","created_by":"testenv/servers/%s/"}]}\n' \
            "$architecture" "$created" "$(cat "$root/testenv/servers/$name.json")" \
            "$base_diff_id" "$layer_id" "$created" "$TESTENV_DEBIAN_SUITE" \
            "$servers_packages" "$created" "$name" >"$work/$name.json"
        # "digest size" of each blob; the base is uploaded once and mounted in the others.
        base=$(registry_blob "$repo" "$base_blob" "$first" "sha256:$base_digest")
        layer=$(registry_blob "$repo" "$work/$name.tar.gz")
        config=$(registry_blob "$repo" "$work/$name.json")
        first=${first:-$repo}
        # shellcheck disable=SC2086  # each is "digest size"
        printf '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"%s","size":%s},{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"%s","size":%s}]}' \
            ${config} ${base} ${layer} >"$work/$name.manifest"
        for tag in ${!tags_var}; do
            curl -fsS -m 30 -X PUT -o /dev/null --data-binary "@$work/$name.manifest" \
                -H 'Content-Type: application/vnd.docker.distribution.manifest.v2+json' \
                "$registry_url/v2/$repo/manifests/$tag"
        done
    done
    rm -rf "$work"
    echo "$key" >"$servers_stamp"
}

ensure_tools
ensure_engine
ensure_registry
# The server images take a few minutes on a fresh machine, mostly on one processor: made
# while the others are. Their output goes to stderr, as all messages do.
seed_servers >&2 &
servers_job=$!
seed_busybox
seed_redis
wait "$servers_job" || die "seeding the server images failed (the messages above say why)"

cat <<ENV
export TESTENV_REGISTRY=$TESTENV_REGISTRY
export TESTENV_AUTH_REGISTRY=$TESTENV_AUTH_REGISTRY
export TESTENV_DIR=$TESTENV_DIR
export PYTEST_CONTAINERS_MIRROR=$TESTENV_REGISTRY
ENV
