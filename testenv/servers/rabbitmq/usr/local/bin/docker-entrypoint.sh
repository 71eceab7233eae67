#!/usr/bin/env bash
# The entrypoint of the test environment's rabbitmq image (Debian's rabbitmq-server 3.10):
# it acts as the official rabbitmq image's entrypoint does, so that code written for that
# image works unchanged. Written for pytest-containers; see testenv/servers/README.md.
#
#   RABBITMQ_DEFAULT_USER, RABBITMQ_DEFAULT_PASS  the user made on a first start
#                                                 (guest, guest; guest may log in from
#                                                 anywhere, conf.d/10-defaults.conf)
#   RABBITMQ_DEFAULT_VHOST                        the virtual host made then (/)
#   RABBITMQ_ERLANG_COOKIE                        the Erlang cookie (else a random one)
#   NAME_FILE                                     NAME read from that file
#
# The server runs in the foreground as the rabbitmq user. The Erlang cookie is in
# /var/lib/rabbitmq/.erlang.cookie, HOME is /var/lib/rabbitmq and /root/.erlang.cookie
# leads there, so rabbitmqctl and rabbitmq-diagnostics work in `docker exec`.
set -Eeuo pipefail

# The server wanted: "-foo" means "rabbitmq-server -foo".
if [ "${1:-}" = "" ] || [ "${1:0:1}" = - ]; then
    set -- rabbitmq-server "$@"
fi
if [ "$1" != rabbitmq-server ]; then
    exec "$@"
fi

# from_env_or_file NAME: NAME, else the content of the file NAME_FILE names (exported).
from_env_or_file() {
    local name=$1 file_name="${1}_FILE"
    if [ -z "${!name:-}" ] && [ -n "${!file_name:-}" ]; then
        export "$name=$(<"${!file_name}")"
    fi
    unset "$file_name"
}

data=${RABBITMQ_DATA_DIR:-/var/lib/rabbitmq}
cookie="$data/.erlang.cookie"

if [ "$(id -u)" = 0 ]; then
    for name in RABBITMQ_DEFAULT_USER RABBITMQ_DEFAULT_PASS RABBITMQ_DEFAULT_VHOST \
        RABBITMQ_ERLANG_COOKIE; do
        from_env_or_file "$name"
    done
    # The defaults the variables ask for, as configuration the server reads (it makes the
    # user and the virtual host when its database is new).
    defaults=/etc/rabbitmq/conf.d/20-environment-defaults.conf
    : >"$defaults"
    if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
        printf 'default_user = %s\n' "$RABBITMQ_DEFAULT_USER" >>"$defaults"
    fi
    if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
        printf 'default_pass = %s\n' "$RABBITMQ_DEFAULT_PASS" >>"$defaults"
    fi
    if [ -n "${RABBITMQ_DEFAULT_VHOST:-}" ]; then
        printf 'default_vhost = %s\n' "$RABBITMQ_DEFAULT_VHOST" >>"$defaults"
    fi
    chmod 640 "$defaults"
    chgrp rabbitmq "$defaults"

    mkdir -p "$data"
    if [ -n "${RABBITMQ_ERLANG_COOKIE:-}" ]; then
        printf '%s' "$RABBITMQ_ERLANG_COOKIE" >"$cookie"
    elif [ ! -s "$cookie" ]; then
        # A cookie of this container's own, there before any command line tool asks.
        letters=$(head -c 60 /dev/urandom | base64 | LC_ALL=C tr -dc '[:upper:]')
        printf '%s' "${letters:0:20}" >"$cookie"
    fi
    chmod 600 "$cookie"
    find "$data" /var/log/rabbitmq \! -user rabbitmq -exec chown rabbitmq:rabbitmq '{}' +
    export HOME=$data
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups -- "${BASH_SOURCE[0]}" "$@"
fi

unset RABBITMQ_DEFAULT_USER_FILE RABBITMQ_DEFAULT_PASS_FILE RABBITMQ_DEFAULT_VHOST_FILE \
    RABBITMQ_ERLANG_COOKIE_FILE RABBITMQ_ERLANG_COOKIE
exec "$@"
