#!/usr/bin/env bash
# The entrypoint of the test environment's postgres image (Debian's postgresql-15): it acts
# as the official postgres image's entrypoint does, so that code written for that image
# works unchanged. Written for pytest-containers; see testenv/servers/README.md.
#
#   POSTGRES_PASSWORD          the superuser's password; needed on a first start unless
#                              POSTGRES_HOST_AUTH_METHOD=trust
#   POSTGRES_USER              the superuser (postgres)
#   POSTGRES_DB                the database made on a first start (POSTGRES_USER)
#   POSTGRES_INITDB_ARGS       more initdb arguments, shell-quoted
#   POSTGRES_INITDB_WALDIR     initdb --waldir
#   POSTGRES_HOST_AUTH_METHOD  pg_hba.conf's method for TCP connections (scram-sha-256)
#   PGDATA                     the data directory (/var/lib/postgresql/data)
#   NAME_FILE                  NAME read from that file (POSTGRES_PASSWORD_FILE, ...)
#
# On a first start (an empty PGDATA) it runs initdb, starts a temporary server on the
# unix socket only, makes POSTGRES_DB, runs /docker-entrypoint-initdb.d/*.sh, *.sql,
# *.sql.gz, *.sql.xz and *.sql.zst, stops that server, then execs the real one, which
# listens on '*'. So "ready to accept connections" is logged twice, as the official
# image logs it.
set -Eeuo pipefail

note() { printf '%s\n' "$*"; }

# from_env_or_file NAME [DEFAULT]: NAME, else the content of the file NAME_FILE names,
# else DEFAULT; exported, and NAME_FILE unset.
from_env_or_file() {
    local name=$1 default=${2:-} file_name="${1}_FILE"
    local value=${!name:-} file=${!file_name:-}
    if [ -n "$value" ] && [ -n "$file" ]; then
        note "error: both $name and $file_name are set; give one of them" >&2
        exit 1
    fi
    if [ -n "$file" ]; then
        value=$(<"$file")
    elif [ -z "$value" ]; then
        value=$default
    fi
    export "$name=$value"
    unset "$file_name"
}

# The server wanted: "-c fsync=off" means "postgres -c fsync=off".
if [ "${1:-}" = "" ] || [ "${1:0:1}" = - ]; then
    set -- postgres "$@"
fi

if [ "$1" != postgres ]; then
    exec "$@"
fi

export PGDATA=${PGDATA:-/var/lib/postgresql/data}

if [ "$(id -u)" = 0 ]; then
    # As root: a data directory and a socket directory the postgres user owns, then the
    # rest as that user.
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres /var/run/postgresql
    chmod 3777 /var/run/postgresql
    find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
    chmod 700 "$PGDATA"
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        mkdir -p "$POSTGRES_INITDB_WALDIR"
        find "$POSTGRES_INITDB_WALDIR" \! -user postgres -exec chown postgres:postgres '{}' +
        chmod 700 "$POSTGRES_INITDB_WALDIR"
    fi
    export HOME=/var/lib/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- "${BASH_SOURCE[0]}" "$@"
fi

mkdir -p "$PGDATA"
chmod 700 "$PGDATA" 2>/dev/null || true

if [ -s "$PGDATA/PG_VERSION" ]; then
    note
    note "PostgreSQL Database directory appears to contain a database; Skipping initialization"
    note
    exec "$@"
fi

from_env_or_file POSTGRES_PASSWORD
from_env_or_file POSTGRES_USER postgres
from_env_or_file POSTGRES_DB "$POSTGRES_USER"
from_env_or_file POSTGRES_INITDB_ARGS
auth_method=${POSTGRES_HOST_AUTH_METHOD:-}

if [ -z "$POSTGRES_PASSWORD" ] && [ "$auth_method" != trust ]; then
    cat >&2 <<'ERROR'
Error: Database is uninitialized and superuser password is not specified.
       Set POSTGRES_PASSWORD to a non-empty value for the superuser, as in
       "-e POSTGRES_PASSWORD=password" on "docker run".

       Or set POSTGRES_HOST_AUTH_METHOD=trust to let every connection in without
       a password (not recommended; see
       https://www.postgresql.org/docs/current/auth-trust.html).
ERROR
    exit 1
fi
if [ "$auth_method" = trust ]; then
    cat >&2 <<'WARNING'
WARNING: POSTGRES_HOST_AUTH_METHOD=trust: every connection gets in without a password,
         whatever password is set. Fine for tests, never for anything else.
WARNING
fi

# initdb, with the password from a pipe (not on a command line) and the extra arguments
# as the shell reads them.
initdb_args=(--username="$POSTGRES_USER")
if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
    initdb_args+=(--waldir="$POSTGRES_INITDB_WALDIR")
fi
if [ -n "$POSTGRES_PASSWORD" ]; then
    eval 'initdb "${initdb_args[@]}" --pwfile=<(printf "%s\n" "$POSTGRES_PASSWORD") '"$POSTGRES_INITDB_ARGS"
else
    eval 'initdb "${initdb_args[@]}" '"$POSTGRES_INITDB_ARGS"
fi

# The real server listens on every address, and host connections need the password.
conf="$PGDATA/postgresql.conf"
if grep -q "^#listen_addresses = 'localhost'" "$conf"; then
    sed -i "s/^#listen_addresses = 'localhost'/listen_addresses = '*'/" "$conf"
else
    printf "\nlisten_addresses = '*'\n" >>"$conf"
fi
if [ -z "$auth_method" ]; then
    auth_method=$(postgres -C password_encryption)
fi
{
    printf '\n'
    if [ "$auth_method" = trust ]; then
        printf '# POSTGRES_HOST_AUTH_METHOD=trust: no password asked of anyone\n'
    fi
    printf 'host all all all %s\n' "$auth_method"
} >>"$PGDATA/pg_hba.conf"

# The temporary server: the same arguments, but on the unix socket only.
shift
temp_options=$(printf '%q ' "$@" -c listen_addresses= -p "${PGPORT:-5432}")
export PGPASSWORD=${PGPASSWORD:-$POSTGRES_PASSWORD}
pg_ctl -D "$PGDATA" -o "$temp_options" -w start
set -- postgres "$@"

psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
if [ "$POSTGRES_DB" != postgres ]; then
    found=$("${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" --tuples-only --no-align \
        <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")
    if [ -z "$found" ]; then
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
        note
    fi
fi

psql_db=("${psql[@]}" --dbname "$POSTGRES_DB")
note
for file in /docker-entrypoint-initdb.d/*; do
    [ -e "$file" ] || continue
    case "$file" in
        *.sh)
            if [ -x "$file" ]; then
                note "$0: running $file"
                "$file"
            else
                note "$0: sourcing $file"
                # shellcheck disable=SC1090
                . "$file"
            fi
            ;;
        *.sql) note "$0: running $file"; "${psql_db[@]}" -f "$file"; note ;;
        *.sql.gz) note "$0: running $file"; gunzip -c "$file" | "${psql_db[@]}"; note ;;
        *.sql.xz) note "$0: running $file"; xzcat "$file" | "${psql_db[@]}"; note ;;
        *.sql.zst) note "$0: running $file"; zstd -dc "$file" | "${psql_db[@]}"; note ;;
        *) note "$0: ignoring $file" ;;
    esac
done

pg_ctl -D "$PGDATA" -m fast -w stop
unset PGPASSWORD

note
note 'PostgreSQL init process complete; ready for start up.'
note
exec "$@"
