#!/usr/bin/env bash
# Sets up one engine topology of the test environment on top of scripts/testenv.sh,
# idempotently, and prints its environment as export/unset lines:
#
#   eval "$(scripts/topology.sh tcp-remote)"
#
#   scripts/topology.sh NAME           set NAME up, print its environment
#   scripts/topology.sh --check NAME   the same, then prove it with the docker CLI and curl:
#                                      a container with a published port, reached the way
#                                      a test on that topology reaches it (messages on stderr)
#   scripts/topology.sh --stop NAME    stop the processes NAME started (socat, sshd, podman,
#                                      the kubedock stand-in;
#                                      context-* share tcp-local's socat); NAME "all": all
#   scripts/topology.sh --list         the names
#
# Everything listens on loopback only; the helper processes run in the background like
# the registry, their pid files and logs in TESTENV_DIR. The shared engine is only used.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
me=topology
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"

TOPOLOGIES="unix tcp-local tcp-remote tcp-ipv6 context-env context-use ssh in-container podman kubedock"
# Exit status of a topology this machine cannot have (no IPv6 loopback): skipped, not failed.
SKIP=3

usage() {
    echo "usage: scripts/topology.sh [--check|--stop] NAME   (NAME: ${TOPOLOGIES// /, })" >&2
    exit 2
}

# The engine every topology leads to is the local one testenv.sh ensures, whatever
# topology the caller's shell has evaluated before.
unset DOCKER_HOST DOCKER_CONTEXT DOCKER_CONFIG DOCKER_TLS_VERIFY DOCKER_CERT_PATH

pidfile_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# stop_pidfile FILE: ends the process FILE names, if it still runs, and removes FILE.
stop_pidfile() {
    local file=$1
    if pidfile_alive "$file"; then
        local pid
        pid=$(cat "$file")
        say "stopping pid $pid ($file)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$file"
}

# ---------------------------------------------------------------- tcp: socat
engine_pings() { [ "$(curl -sS -g -m 3 "$@" 2>/dev/null)" = OK ]; }

# start_socat NAME LISTEN URL: socat from LISTEN (a socat address) to the engine's socket;
# URL is the endpoint's /_ping, which answers OK once it forwards.
start_socat() {
    local name=$1 listen=$2 ping=$3
    if engine_pings "$ping"; then return; fi
    command -v socat >/dev/null || apt_install socat
    local pidfile="$TESTENV_DIR/socat-$name.pid" log="$TESTENV_DIR/socat-$name.log"
    stop_pidfile "$pidfile"
    [ -S "$TESTENV_ENGINE_SOCKET" ] || die "no engine socket at $TESTENV_ENGINE_SOCKET (TESTENV_ENGINE_SOCKET)"
    say "starting socat $listen -> $TESTENV_ENGINE_SOCKET (log: $log)"
    setsid nohup socat -d "$listen,reuseaddr,fork" "UNIX-CONNECT:$TESTENV_ENGINE_SOCKET" \
        >>"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 50); do
        if engine_pings "$ping"; then return; fi
        pidfile_alive "$pidfile" || break
        sleep 0.1
    done
    tail -n 5 "$log" >&2 || true
    die "socat for $name did not forward $ping to the engine (is the port taken? see $log)"
}

has_ipv6_loopback() {
    # ::1 on lo, as /proc/net/if_inet6 lists it (no `ip` needed).
    grep -qE '^0{31}1 .* lo$' /proc/net/if_inet6 2>/dev/null
}

setup_tcp_local() {
    start_socat tcp-local "TCP4-LISTEN:$TESTENV_TCP_PORT,bind=127.0.0.1" \
        "http://127.0.0.1:$TESTENV_TCP_PORT/_ping"
}

setup_tcp_remote() {
    start_socat tcp-remote "TCP4-LISTEN:$TESTENV_REMOTE_PORT,bind=$TESTENV_REMOTE_ADDRESS" \
        "http://$TESTENV_REMOTE_ADDRESS:$TESTENV_REMOTE_PORT/_ping"
}

setup_tcp_ipv6() {
    if ! has_ipv6_loopback; then
        say "skipping tcp-ipv6: this machine has no IPv6 loopback (no ::1 on lo in /proc/net/if_inet6)"
        exit "$SKIP"
    fi
    start_socat tcp-ipv6 "TCP6-LISTEN:$TESTENV_IPV6_PORT,bind=[::1],ipv6only=1" \
        "http://[::1]:$TESTENV_IPV6_PORT/_ping"
}

# ---------------------------------------------------------------- docker contexts
# ensure_context CONFIG_DIR: the context TESTENV_CONTEXT, the tcp endpoint of tcp-local, in a
# private DOCKER_CONFIG (never the user's ~/.docker).
ensure_context() {
    local config=$1 host="tcp://127.0.0.1:$TESTENV_TCP_PORT"
    mkdir -p "$config"
    chmod 700 "$config"
    local current
    current=$(DOCKER_CONFIG=$config docker context inspect "$TESTENV_CONTEXT" \
        --format '{{.Endpoints.docker.Host}}' 2>/dev/null || true)
    if [ "$current" = "$host" ]; then return; fi
    if [ -n "$current" ]; then
        DOCKER_CONFIG=$config docker context update "$TESTENV_CONTEXT" --docker "host=$host" >/dev/null 2>&1 || die "docker context update failed in $config"
    else
        say "creating docker context $TESTENV_CONTEXT ($host) in $config"
        DOCKER_CONFIG=$config docker context create "$TESTENV_CONTEXT" \
            --description "pytest-containers test environment: tcp-local" \
            --docker "host=$host" >/dev/null 2>&1 || die "docker context create failed in $config"
    fi
}

setup_context_env() {
    setup_tcp_local
    ensure_context "$TESTENV_DIR/docker-config-context-env"
}

setup_context_use() {
    setup_tcp_local
    local config="$TESTENV_DIR/docker-config-context-use"
    ensure_context "$config"
    if [ "$(DOCKER_CONFIG=$config docker context show 2>/dev/null)" != "$TESTENV_CONTEXT" ]; then
        DOCKER_CONFIG=$config docker context use "$TESTENV_CONTEXT" >/dev/null 2>&1 || die "docker context use failed in $config"
    fi
}

# ---------------------------------------------------------------- ssh: a private sshd
ssh_dir="$TESTENV_DIR/sshd"
ssh_home="$TESTENV_DIR/ssh-home"
ssh_badkey_home="$TESTENV_DIR/ssh-badkey-home"

# write_ssh_home HOME KNOWN_HOSTS_LINE: a HOME whose ~/.ssh/config names the engine's
# alias (as paramiko, docker-py's ssh transport, and OpenSSH read it), with that known_hosts.
write_ssh_home() {
    local home=$1 known=$2
    mkdir -p "$home/.ssh" "$home/bin"
    chmod 700 "$home" "$home/.ssh"
    cat >"$home/.ssh/config" <<CONFIG
Host $TESTENV_SSH_ALIAS
    HostName 127.0.0.1
    Port $TESTENV_SSH_PORT
    User root
    IdentityFile $ssh_home/.ssh/id_ed25519
    IdentitiesOnly yes
    UserKnownHostsFile $home/.ssh/known_hosts
    StrictHostKeyChecking yes
    BatchMode yes
CONFIG
    echo "$known" >"$home/.ssh/known_hosts"
    chmod 600 "$home/.ssh/config" "$home/.ssh/known_hosts"
    # OpenSSH reads the passwd entry's home, not $HOME: the docker CLI's ssh gets the
    # private config through this wrapper, first on PATH.
    cat >"$home/bin/ssh" <<WRAPPER
#!/bin/sh
exec /usr/bin/ssh -F "$home/.ssh/config" "\$@"
WRAPPER
    chmod 755 "$home/bin/ssh"
}

ssh_answers() { HOME=$ssh_home "$ssh_home/bin/ssh" "$TESTENV_SSH_ALIAS" true >/dev/null 2>&1; }

setup_ssh() {
    local missing=()
    [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
    [ -x /usr/bin/ssh ] || missing+=(openssh-client)
    if [ ${#missing[@]} -gt 0 ]; then apt_install_quiet_services "${missing[@]}"; fi
    mkdir -p "$ssh_dir"
    chmod 700 "$ssh_dir"
    [ -s "$ssh_dir/ssh_host_ed25519_key" ] \
        || ssh-keygen -q -t ed25519 -N '' -C pytest-containers-testenv-host -f "$ssh_dir/ssh_host_ed25519_key"
    # A key the server does not have, for the known_hosts of the wrong-host-key setup.
    [ -s "$ssh_dir/wrong_host_key" ] \
        || ssh-keygen -q -t ed25519 -N '' -C pytest-containers-testenv-wrong -f "$ssh_dir/wrong_host_key"
    mkdir -p "$ssh_home/.ssh"
    chmod 700 "$ssh_home" "$ssh_home/.ssh"
    [ -s "$ssh_home/.ssh/id_ed25519" ] \
        || ssh-keygen -q -t ed25519 -N '' -C pytest-containers-testenv-client -f "$ssh_home/.ssh/id_ed25519"
    cp "$ssh_home/.ssh/id_ed25519.pub" "$ssh_dir/authorized_keys"
    local hostkey wrongkey
    hostkey=$(cut -d' ' -f1,2 "$ssh_dir/ssh_host_ed25519_key.pub")
    wrongkey=$(cut -d' ' -f1,2 "$ssh_dir/wrong_host_key.pub")
    write_ssh_home "$ssh_home" "[127.0.0.1]:$TESTENV_SSH_PORT $hostkey"
    write_ssh_home "$ssh_badkey_home" "[127.0.0.1]:$TESTENV_SSH_PORT $wrongkey"
    cat >"$ssh_dir/sshd_config" <<CONFIG
# pytest-containers test environment: an sshd of its own on loopback, as a remote engine host.
ListenAddress 127.0.0.1:$TESTENV_SSH_PORT
HostKey $ssh_dir/ssh_host_ed25519_key
PidFile $ssh_dir/sshd.pid
AuthorizedKeysFile $ssh_dir/authorized_keys
AllowUsers root
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# The keys live under /var/tmp, which is world-writable (sticky).
StrictModes no
PrintMotd no
# xdist workers each open several connections and sessions at once.
MaxStartups 100:30:200
MaxSessions 100
LogLevel INFO
CONFIG
    if pidfile_alive "$ssh_dir/sshd.pid" && ssh_answers; then return; fi
    stop_pidfile "$ssh_dir/sshd.pid"
    # sshd's privilege separation directory (Debian's service makes it at boot).
    mkdir -p /run/sshd
    chmod 755 /run/sshd
    /usr/sbin/sshd -t -f "$ssh_dir/sshd_config" || die "sshd rejects $ssh_dir/sshd_config"
    say "starting sshd on 127.0.0.1:$TESTENV_SSH_PORT (log: $TESTENV_DIR/sshd.log)"
    # sshd daemonizes itself and writes its PidFile.
    /usr/sbin/sshd -f "$ssh_dir/sshd_config" -E "$TESTENV_DIR/sshd.log" </dev/null
    for _ in $(seq 1 50); do
        if ssh_answers; then return; fi
        sleep 0.1
    done
    tail -n 10 "$TESTENV_DIR/sshd.log" >&2 || true
    HOME=$ssh_home "$ssh_home/bin/ssh" "$TESTENV_SSH_ALIAS" true || true
    die "cannot log in to the test sshd on 127.0.0.1:$TESTENV_SSH_PORT"
}

# ---------------------------------------------------------------- tests inside a container
runner_tarball="$TESTENV_DIR/debian-$TESTENV_DEBIAN_SUITE-runner.tar"

setup_in_container() {
    if docker image inspect "$TESTENV_RUNNER_IMAGE" >/dev/null 2>&1; then return; fi
    command -v debootstrap >/dev/null || apt_install debootstrap
    # What a CPython built on this machine (pyenv's) loads, Debian's python3 for a .venv
    # made from it, and curl to prove the network from inside.
    debian_tarball "$runner_tarball" ca-certificates curl procps python3 \
        libbz2-1.0 libexpat1 libffi8 liblzma5 libncursesw6 libreadline8 libsqlite3-0 \
        libssl3 libuuid1 zlib1g
    say "importing the runner image $TESTENV_RUNNER_IMAGE"
    docker import \
        --change 'LABEL pytest-containers.testenv=runner' \
        --change 'CMD ["bash"]' \
        "$runner_tarball" "$TESTENV_RUNNER_IMAGE" >/dev/null
}

# ---------------------------------------------------------------- podman
podman_dir="$TESTENV_DIR/podman"
podman_sock="$TESTENV_DIR/podman.sock"

podman_answers() { [ "$(curl -sS -m 5 --unix-socket "$podman_sock" http://localhost/_ping 2>/dev/null)" = OK ]; }

# hard_limit FLAG CAP: this shell's hard ulimit -FLAG, at most CAP.
hard_limit() {
    local value
    value=$(ulimit -H "-$1")
    if [ "$value" = unlimited ] || [ "$value" -gt "$2" ]; then value=$2; fi
    echo "$value"
}

setup_podman() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    [ -x /usr/lib/podman/netavark ] || missing+=(netavark)
    # Names on podman's networks (network aliases) need its DNS server.
    [ -x /usr/lib/podman/aardvark-dns ] || missing+=(aardvark-dns)
    command -v conmon >/dev/null || missing+=(conmon)
    # Recommends would bring buildah, dbus-user-session and more that a rootful API
    # service does not need.
    if [ ${#missing[@]} -gt 0 ]; then apt_install_quiet_services --no-install-recommends "${missing[@]}"; fi
    mkdir -p "$podman_dir"/{graphroot,runroot,tmp,networks,volumes}
    # Its own storage, never dockerd's; overlay when the kernel has it, else vfs.
    local driver=vfs
    if grep -qw overlay /proc/filesystems; then driver=overlay; fi
    cat >"$podman_dir/storage.conf" <<CONF
# pytest-containers test environment: podman's own storage, apart from dockerd's.
[storage]
driver = "$driver"
graphroot = "$podman_dir/graphroot"
runroot = "$podman_dir/runroot"
CONF
    cat >"$podman_dir/registries.conf" <<CONF
# pytest-containers test environment: the loopback registry speaks plain HTTP.
unqualified-search-registries = ["docker.io"]

[[registry]]
location = "$TESTENV_REGISTRY"
insecure = true
CONF
    # podman raises nofile and nproc to 1048576 and more, which a nested machine may not
    # allow (runc: "error setting rlimit type 6: operation not permitted"); the service
    # itself runs with nproc 32768, so stay well under both.
    local nofile nproc
    nofile=$(hard_limit n 65536)
    nproc=$(hard_limit u 16384)
    cat >"$podman_dir/containers.conf" <<CONF
# pytest-containers test environment: podman's Docker API service (rootful), all its
# state under $podman_dir.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[network]
network_backend = "netavark"
network_config_dir = "$podman_dir/networks"

[engine]
tmp_dir = "$podman_dir/tmp"
volume_path = "$podman_dir/volumes"
CONF
    if podman_answers; then return; fi
    local pidfile="$TESTENV_DIR/podman.pid" log="$TESTENV_DIR/podman.log"
    stop_pidfile "$pidfile"
    # Run state is meant for tmpfs; these survive a reboot, after which they would
    # confuse the new service. Containers of this boot keep theirs (their conmon lives on).
    local boot
    boot=$(cat /proc/sys/kernel/random/boot_id)
    if [ "$(cat "$podman_dir/boot_id" 2>/dev/null)" != "$boot" ]; then
        rm -rf "$podman_dir/runroot" "$podman_dir/tmp"
        mkdir -p "$podman_dir/runroot" "$podman_dir/tmp"
        echo "$boot" >"$podman_dir/boot_id"
    fi
    rm -f "$podman_sock"
    say "starting podman system service on $podman_sock (log: $log)"
    (
        cd /
        podman_env
        exec setsid nohup podman system service --time=0 "unix://$podman_sock" >>"$log" 2>&1 </dev/null
    ) &
    echo $! >"$pidfile"
    for _ in $(seq 1 150); do
        if podman_answers; then return; fi
        pidfile_alive "$pidfile" || break
        sleep 0.2
    done
    tail -n 20 "$log" >&2 || true
    die "podman's API service did not answer on $podman_sock (log: $log)"
}

podman_env() {
    export CONTAINERS_CONF="$podman_dir/containers.conf"
    export CONTAINERS_REGISTRIES_CONF="$podman_dir/registries.conf"
    export CONTAINERS_STORAGE_CONF="$podman_dir/storage.conf"
}

# ---------------------------------------------------------------- kubedock: our stand-in
# scripts/kubedock-standin.py: the engine behind kubedock's Docker API (its /info and
# /version, 501 for build and image load, stdout and stderr merged in logs).
kubedock_sock="$TESTENV_DIR/kubedock.sock"

kubedock_answers() {
    case "$(curl -sS -m 5 --unix-socket "$kubedock_sock" http://localhost/info 2>/dev/null)" in
        *'"Name": "kubedock"'*) return 0 ;;
    esac
    return 1
}

setup_kubedock() {
    if kubedock_answers; then return; fi
    local pidfile="$TESTENV_DIR/kubedock.pid" log="$TESTENV_DIR/kubedock.log"
    stop_pidfile "$pidfile"
    [ -S "$TESTENV_ENGINE_SOCKET" ] || die "no engine socket at $TESTENV_ENGINE_SOCKET (TESTENV_ENGINE_SOCKET)"
    local python=python3
    [ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
    say "starting the kubedock stand-in on $kubedock_sock -> $TESTENV_ENGINE_SOCKET (log: $log)"
    setsid nohup "$python" "$root/scripts/kubedock-standin.py" --listen "$kubedock_sock" \
        --engine "$TESTENV_ENGINE_SOCKET" >>"$log" 2>&1 </dev/null &
    echo $! >"$pidfile"
    for _ in $(seq 1 50); do
        if kubedock_answers; then return; fi
        pidfile_alive "$pidfile" || break
        sleep 0.1
    done
    tail -n 5 "$log" >&2 || true
    die "the kubedock stand-in did not answer on $kubedock_sock (log: $log)"
}

# ---------------------------------------------------------------- environments
# print_env NAME: the export/unset lines of NAME, after testenv.sh's own.
print_env() {
    local name=$1
    echo "$testenv_exports"
    echo "export TESTENV_TOPOLOGY=$name"
    local docker_host="" context="" config="" home=""
    # The address tests on NAME must get for published ports (container.host), where the
    # topology fixes it: tcp://[::1] may be served at ::1 or 127.0.0.1, and inside a
    # container it is the service's or the gateway's address.
    local expect=127.0.0.1
    case "$name" in
        unix) ;;
        tcp-local) docker_host="tcp://127.0.0.1:$TESTENV_TCP_PORT" ;;
        tcp-remote)
            docker_host="tcp://$TESTENV_REMOTE_ADDRESS:$TESTENV_REMOTE_PORT"
            expect=$TESTENV_REMOTE_ADDRESS
            ;;
        tcp-ipv6)
            docker_host="tcp://[::1]:$TESTENV_IPV6_PORT"
            expect=""
            ;;
        context-env)
            config="$TESTENV_DIR/docker-config-context-env"
            context=$TESTENV_CONTEXT
            ;;
        context-use) config="$TESTENV_DIR/docker-config-context-use" ;;
        ssh)
            # The alias resolves through ~/.ssh/config (HostName, User, IdentityFile); the
            # port is in the URL because docker-py (7.2) makes ssh://ALIAS into ssh://ALIAS:22
            # before it reads the config, so a config Port alone is never used.
            docker_host="ssh://$TESTENV_SSH_ALIAS:$TESTENV_SSH_PORT"
            home=$ssh_home
            ;;
        in-container) expect="" ;;
        podman) docker_host="unix://$podman_sock" ;;
        kubedock) docker_host="unix://$kubedock_sock" ;;
    esac
    if [ -n "$expect" ]; then echo "export TESTENV_EXPECT_HOST=$expect"; else echo "unset TESTENV_EXPECT_HOST"; fi
    if [ -n "$docker_host" ]; then echo "export DOCKER_HOST=$docker_host"; else echo "unset DOCKER_HOST"; fi
    if [ -n "$context" ]; then echo "export DOCKER_CONTEXT=$context"; else echo "unset DOCKER_CONTEXT"; fi
    if [ -n "$config" ]; then echo "export DOCKER_CONFIG=$config"; else echo "unset DOCKER_CONFIG"; fi
    echo "unset DOCKER_TLS_VERIFY DOCKER_CERT_PATH"
    if [ -n "$home" ]; then
        echo "export HOME=$home"
        echo "export PATH=$home/bin:\$PATH"
        echo "export TESTENV_SSH_BADKEY_HOME=$ssh_badkey_home"
    fi
    if [ "$name" = podman ]; then
        echo "export CONTAINERS_CONF=$podman_dir/containers.conf"
        echo "export CONTAINERS_REGISTRIES_CONF=$podman_dir/registries.conf"
        echo "export CONTAINERS_STORAGE_CONF=$podman_dir/storage.conf"
    fi
    if [ "$name" = in-container ]; then
        echo "export TESTENV_RUNNER_IMAGE=$TESTENV_RUNNER_IMAGE"
    fi
}

# ---------------------------------------------------------------- the proof
check_label=pytest-containers.testenv=check

# check_published HOST: a busybox httpd with its port published on HOST, fetched with curl
# at HOST, then removed. Runs with the topology's environment.
check_published() {
    local host=$1 image="$TESTENV_REGISTRY/$TESTENV_BUSYBOX_REPO:${TESTENV_BUSYBOX_TAGS%% *}"
    local bind=$host
    case "$host" in *:*) bind="[$host]" ;; esac
    docker pull -q "$image" >/dev/null
    local id
    id=$(docker run -d --rm --label "$check_label" -p "$bind::8080" "$image" \
        sh -c 'mkdir /www && echo pytest-containers > /www/index.html && exec httpd -f -p 8080 -h /www')
    local port status=0 body=""
    port=$(docker port "$id" 8080/tcp | head -n 1 | sed 's/.*://')
    for _ in $(seq 1 50); do
        body=$(curl -sS -g -m 2 "http://$bind:$port/index.html" 2>/dev/null) && break
        sleep 0.1
    done
    [ "$body" = pytest-containers ] || status=1
    docker rm -f "$id" >/dev/null 2>&1 || true
    [ "$status" = 0 ] || die "check: curl http://$bind:$port/ did not reach the container's published port"
    say "check: a container's port published on $bind answered curl at $bind:$port"
}

check_topology() {
    local name=$1
    local version
    version=$(docker version --format '{{.Server.Version}}' 2>&1) \
        || die "check: docker version failed on $name: $version"
    say "check: docker version on $name: server $version (DOCKER_HOST=${DOCKER_HOST:-} DOCKER_CONTEXT=${DOCKER_CONTEXT:-} DOCKER_CONFIG=${DOCKER_CONFIG:-})"
    case "$name" in
        context-env | context-use)
            local shown
            shown=$(docker context show)
            [ "$shown" = "$TESTENV_CONTEXT" ] || die "check: docker context show says $shown, not $TESTENV_CONTEXT"
            say "check: docker context show: $shown ($(docker context inspect --format '{{.Endpoints.docker.Host}}' "$shown"))"
            ;;
        ssh)
            # docker-py's own ssh transport (paramiko) with this HOME, and with the wrong key.
            local python="$root/.venv/bin/python"
            if [ -x "$python" ] && "$python" -c 'import paramiko' 2>/dev/null; then
                "$python" -c 'import docker; print("topology: check: docker-py over ssh (paramiko): server", docker.from_env().version()["Version"])' >&2 \
                    || die "check: docker-py cannot reach DOCKER_HOST=$DOCKER_HOST"
                local refused
                if refused=$(HOME=$TESTENV_SSH_BADKEY_HOME "$python" -c 'import docker; docker.from_env().version()' 2>&1); then
                    die "check: docker-py reached the engine with the wrong host key in $TESTENV_SSH_BADKEY_HOME"
                fi
                say "check: with HOME=$TESTENV_SSH_BADKEY_HOME docker-py is refused: $(echo "$refused" | grep -E 'Exception|Error' | tail -n 1)"
            else
                say "check: no paramiko in .venv (scripts/venv.sh installs it): docker-py's ssh transport not checked"
            fi
            ;;
        podman)
            local kind
            kind=$(curl -sS -m 10 --unix-socket "$podman_sock" http://localhost/version)
            case "$kind" in *Podman*) ;; *) die "check: $podman_sock /version does not name Podman: $kind" ;; esac
            say "check: curl --unix-socket $podman_sock /version: $(echo "$kind" | grep -o '"Name":"Podman Engine","Version":"[^"]*"')"
            ;;
        kubedock)
            local api status
            api=$(docker version --format '{{.Server.APIVersion}}')
            [ "$api" = 1.25 ] || die "check: the kubedock stand-in says API $api, not 1.25"
            status=$(curl -sS -m 10 -o /dev/null -w '%{http_code}' -X POST --unix-socket "$kubedock_sock" http://localhost/v1.25/build)
            [ "$status" = 501 ] || die "check: POST /build on the kubedock stand-in answered $status, not 501"
            say "check: kubedock stand-in: /info names kubedock, API $api, POST /build answers $status"
            ;;
    esac
    if [ "$name" = in-container ]; then
        check_in_container
    else
        local host=127.0.0.1
        case "$name" in
            tcp-remote) host=$TESTENV_REMOTE_ADDRESS ;;
            tcp-ipv6) host="::1" ;;
        esac
        check_published "$host"
    fi
}

# Inside the runner: the docker CLI and docker-py over the mounted socket, and a service
# container on the default bridge reached at its address there.
check_in_container() {
    # shellcheck disable=SC2016 # expanded inside the container
    "$root/scripts/in-container" bash -euo pipefail -c '
        image="$TESTENV_REGISTRY/$TESTENV_BUSYBOX_REPO:${TESTENV_BUSYBOX_TAGS%% *}"
        echo "in-container: docker version: server $(docker version --format "{{.Server.Version}}")" >&2
        "$VENV_PYTHON" -c "import docker, pytest_containers; print(\"in-container: docker-py:\", docker.from_env().version()[\"Version\"])" >&2
        docker pull -q "$image" >/dev/null
        id=$(docker run -d --rm --label pytest-containers.testenv=check "$image" \
            sh -c "mkdir /www && echo pytest-containers > /www/index.html && exec httpd -f -p 8080 -h /www")
        trap "docker rm -f $id >/dev/null 2>&1 || true" EXIT
        ip=$(docker inspect -f "{{.NetworkSettings.IPAddress}}" "$id")
        for _ in $(seq 1 50); do
            body=$(curl -sS -m 2 "http://$ip:8080/index.html" 2>/dev/null) && break
            sleep 0.1
        done
        [ "${body:-}" = pytest-containers ] || { echo "in-container: curl http://$ip:8080/ failed" >&2; exit 1; }
        echo "in-container: a service container on the default bridge answered curl at $ip:8080" >&2
    ' || die "check: in-container failed"
}

# ---------------------------------------------------------------- main
stop_topology() {
    case "$1" in
        tcp-local | context-env | context-use) stop_pidfile "$TESTENV_DIR/socat-tcp-local.pid" ;;
        tcp-remote) stop_pidfile "$TESTENV_DIR/socat-tcp-remote.pid" ;;
        tcp-ipv6) stop_pidfile "$TESTENV_DIR/socat-tcp-ipv6.pid" ;;
        ssh) stop_pidfile "$ssh_dir/sshd.pid" ;;
        podman) stop_pidfile "$TESTENV_DIR/podman.pid" ;;
        kubedock) stop_pidfile "$TESTENV_DIR/kubedock.pid" ;;
        unix | in-container) ;;
    esac
}

action=setup
case "${1:-}" in
    --check) action=check; shift ;;
    --stop) action=stop; shift ;;
    --list) echo "$TOPOLOGIES"; exit 0 ;;
    -h | --help | "") usage ;;
esac
[ $# = 1 ] || usage
name=$1
if [ "$action" = stop ] && [ "$name" = all ]; then name=$TOPOLOGIES; fi
for each in $name; do
    case " $TOPOLOGIES " in *" $each "*) ;; *) echo "topology: unknown topology '$each'" >&2; usage ;; esac
done

if [ "$action" = stop ]; then
    for each in $name; do stop_topology "$each"; done
    exit 0
fi

testenv_exports=$("$root/scripts/testenv.sh")
eval "$testenv_exports"
case "$name" in
    unix) ;;
    tcp-local) setup_tcp_local ;;
    tcp-remote) setup_tcp_remote ;;
    tcp-ipv6) setup_tcp_ipv6 ;;
    context-env) setup_context_env ;;
    context-use) setup_context_use ;;
    ssh) setup_ssh ;;
    in-container) setup_in_container ;;
    podman) setup_podman ;;
    kubedock) setup_kubedock ;;
esac
env_lines=$(print_env "$name")
if [ "$action" = check ]; then
    (
        eval "$env_lines"
        check_topology "$name"
    )
fi
echo "$env_lines"
