#!/usr/bin/env bash
# The entrypoint of the test environment's mariadb image (Debian's mariadb-server 10.11): it
# acts as the official mariadb image's entrypoint does, so that code written for that image
# works unchanged. Written for pytest-containers; see testenv/servers/README.md.
#
# Each MARIADB_ variable may be given as its MYSQL_ name instead, and either as NAME_FILE
# (the file holds the value):
#   MARIADB_ROOT_PASSWORD (MYSQL_ROOT_PASSWORD), MARIADB_ROOT_PASSWORD_HASH
#   MARIADB_ALLOW_EMPTY_ROOT_PASSWORD (MYSQL_ALLOW_EMPTY_PASSWORD)
#   MARIADB_RANDOM_ROOT_PASSWORD (MYSQL_RANDOM_ROOT_PASSWORD)
#       one of these four is needed on a first start
#   MARIADB_ROOT_HOST (MYSQL_ROOT_HOST)      where root may come from besides localhost (%)
#   MARIADB_DATABASE (MYSQL_DATABASE)        a database made on a first start
#   MARIADB_USER, MARIADB_PASSWORD (MYSQL_USER, MYSQL_PASSWORD), MARIADB_PASSWORD_HASH
#                                            a user from anywhere with all on that database
#   MARIADB_INITDB_SKIP_TZINFO (MYSQL_INITDB_SKIP_TZINFO)  no time zone tables
#
# On a first start (no mysql directory in the data directory) it runs mariadb-install-db,
# starts a temporary server with --skip-networking, sets the passwords, makes the database
# and the user, runs /docker-entrypoint-initdb.d/*.sh, *.sql, *.sql.gz, *.sql.xz,
# *.sql.zst and *.sql.bz2, stops that server, then execs the real one, which listens on
# 0.0.0.0:3306 (/etc/mysql/mariadb.conf.d/99-docker.cnf).
set -Eeuo pipefail

log() {
    local level=$1; shift
    printf '%s [%s] [Entrypoint]: %s\n' "$(date --rfc-3339=seconds)" "$level" "$*"
}
note() { log Note "$@"; }
warn() { log Warn "$@" >&2; }
fail() { log ERROR "$@" >&2; exit 1; }

# setting NAME [ALIAS] [DEFAULT]: NAME, else NAME_FILE's content, else the same for ALIAS,
# else DEFAULT; exported, and the _FILE variables unset.
setting() {
    local name=$1 alias=${2:-} default=${3:-} value="" each file
    for each in "$name" $alias; do
        file="${each}_FILE"
        if [ -z "$value" ] && [ -n "${!each:-}" ]; then
            value=${!each}
        elif [ -z "$value" ] && [ -n "${!file:-}" ]; then
            value=$(<"${!file}")
        fi
        unset "$file"
    done
    export "$name=${value:-$default}"
}

# The server wanted: "--innodb-flush-log-at-trx-commit=0" means "mariadbd --innodb...".
if [ "${1:-}" = "" ] || [ "${1:0:1}" = - ]; then
    set -- mariadbd "$@"
fi
case "$1" in
    mariadbd | mysqld) ;;
    *) exec "$@" ;;
esac
for arg in "$@"; do
    case "$arg" in
        '-?' | --help | --print-defaults | -V | --version) exec "$@" ;;
    esac
done

# server_setting NAME SERVER [ARGUMENT...]: the server's NAME with those arguments and the
# configuration files.
server_setting() {
    local name=$1; shift
    "$@" --verbose --help 2>/dev/null | awk -v name="$name" '$1 == name && NF == 2 { print $2; exit }'
}
datadir=$(server_setting datadir "$@")
socket=$(server_setting socket "$@")
datadir=${datadir%/}
[ -n "$datadir" ] || fail "could not read the data directory from \"$* --verbose --help\""

if [ "$(id -u)" = 0 ]; then
    # As root: a data directory and a socket directory the mysql user owns, then the rest
    # as that user.
    mkdir -p "$datadir" "$(dirname "$socket")"
    find "$datadir" "$(dirname "$socket")" \! -user mysql -exec chown mysql:mysql '{}' +
    exec setpriv --reuid=mysql --regid=mysql --init-groups -- "${BASH_SOURCE[0]}" "$@"
fi

if [ -d "$datadir/mysql" ]; then
    note "MariaDB data directory $datadir holds a database: skipping initialization"
    exec "$@"
fi

setting MARIADB_ROOT_PASSWORD MYSQL_ROOT_PASSWORD
setting MARIADB_ROOT_PASSWORD_HASH
setting MARIADB_ALLOW_EMPTY_ROOT_PASSWORD MYSQL_ALLOW_EMPTY_PASSWORD
setting MARIADB_RANDOM_ROOT_PASSWORD MYSQL_RANDOM_ROOT_PASSWORD
setting MARIADB_ROOT_HOST MYSQL_ROOT_HOST %
setting MARIADB_DATABASE MYSQL_DATABASE
setting MARIADB_USER MYSQL_USER
setting MARIADB_PASSWORD MYSQL_PASSWORD
setting MARIADB_PASSWORD_HASH
setting MARIADB_INITDB_SKIP_TZINFO MYSQL_INITDB_SKIP_TZINFO

if [ -z "$MARIADB_ROOT_PASSWORD" ] && [ -z "$MARIADB_ROOT_PASSWORD_HASH" ] \
    && [ -z "$MARIADB_ALLOW_EMPTY_ROOT_PASSWORD" ] && [ -z "$MARIADB_RANDOM_ROOT_PASSWORD" ]; then
    fail "Database is uninitialized and password option is not specified
	You need to specify one of MARIADB_ROOT_PASSWORD, MARIADB_ROOT_PASSWORD_HASH, MARIADB_ALLOW_EMPTY_ROOT_PASSWORD and MARIADB_RANDOM_ROOT_PASSWORD"
fi
if [ "$MARIADB_USER" = root ]; then
    fail "MARIADB_USER=root: MARIADB_USER and MARIADB_PASSWORD make a regular user, not root (set MARIADB_ROOT_PASSWORD for root)"
fi
if [ -n "$MARIADB_USER" ] && [ -z "$MARIADB_PASSWORD" ] && [ -z "$MARIADB_PASSWORD_HASH" ]; then
    warn "MARIADB_USER without MARIADB_PASSWORD: the user $MARIADB_USER has no password"
fi
if [ -z "$MARIADB_USER" ] && { [ -n "$MARIADB_PASSWORD" ] || [ -n "$MARIADB_PASSWORD_HASH" ]; }; then
    warn "MARIADB_PASSWORD without MARIADB_USER: ignored"
fi
if [ -n "$MARIADB_RANDOM_ROOT_PASSWORD" ] && [ -z "$MARIADB_ROOT_PASSWORD" ] \
    && [ -z "$MARIADB_ROOT_PASSWORD_HASH" ]; then
    MARIADB_ROOT_PASSWORD=$(head -c 24 /dev/urandom | base64)
    export MARIADB_ROOT_PASSWORD
    note "GENERATED ROOT PASSWORD: $MARIADB_ROOT_PASSWORD"
fi

# SQL literals: 'a string' and `a name`.
sql_string() {
    local text=$1
    text=${text//\\/\\\\}
    text=${text//\'/\\\'}
    printf "'%s'" "$text"
}
# shellcheck disable=SC2016  # the backquotes are SQL's, not the shell's
sql_name() { printf '`%s`' "${1//\`/\`\`}"; }

note "Initializing database files"
mariadb-install-db --datadir="$datadir" --rpm --auth-root-authentication-method=normal \
    --skip-test-db --default-time-zone=SYSTEM --enforce-storage-engine= --skip-log-bin \
    --expire-logs-days=0 --loose-innodb_buffer_pool_load_at_startup=0 \
    --loose-innodb_buffer_pool_dump_at_shutdown=0 "${@:2}"
note "Database files initialized"

note "Starting temporary server"
"$@" --skip-networking --default-time-zone=SYSTEM --socket="$socket" --wsrep_on=OFF \
    --expire-logs-days=0 --skip-slave-start --loose-innodb_buffer_pool_load_at_startup=0 \
    --loose-innodb_buffer_pool_dump_at_shutdown=0 &
server=$!

# sql [ARGUMENT...]: the mariadb client as root on the temporary server's socket; the root
# password once it is set.
root_password=""
sql() {
    MYSQL_PWD=$root_password mariadb --protocol=socket --socket="$socket" -uroot -hlocalhost \
        --binary-mode "$@"
}

deadline=$((SECONDS + 60))
until sql --database=mysql -e 'SELECT 1' >/dev/null 2>&1; do
    kill -0 "$server" 2>/dev/null || fail "the temporary server exited; its log is above"
    [ "$SECONDS" -lt "$deadline" ] || fail "the temporary server did not answer within 60 s"
    sleep 0.2
done
note "Temporary server started."

if [ -z "$MARIADB_INITDB_SKIP_TZINFO" ]; then
    # Time zone names (CONVERT_TZ, SET time_zone = 'Europe/Paris'), as the official image.
    { mariadb-tzinfo-to-sql --skip-write-binlog /usr/share/zoneinfo 2>/dev/null || true; } \
        | sql --database=mysql
fi

# root@localhost's password: now, or (a hash, which nothing can log in with here) after
# the initdb.d files, as the official image does.
root_local_later=""
if [ -n "$MARIADB_ROOT_PASSWORD_HASH" ]; then
    root_identity="IDENTIFIED BY PASSWORD $(sql_string "$MARIADB_ROOT_PASSWORD_HASH")"
    root_local=""
    root_local_later="SET PASSWORD FOR 'root'@'localhost' = $(sql_string "$MARIADB_ROOT_PASSWORD_HASH");"
else
    root_identity="IDENTIFIED BY $(sql_string "$MARIADB_ROOT_PASSWORD")"
    root_local="SET PASSWORD FOR 'root'@'localhost' = PASSWORD($(sql_string "$MARIADB_ROOT_PASSWORD"));"
fi
root_remote=""
if [ -n "$MARIADB_ROOT_HOST" ] && [ "$MARIADB_ROOT_HOST" != localhost ]; then
    host=$(sql_string "$MARIADB_ROOT_HOST")
    root_remote="CREATE USER 'root'@$host $root_identity;
GRANT ALL ON *.* TO 'root'@$host WITH GRANT OPTION;
GRANT PROXY ON ''@'%' TO 'root'@$host WITH GRANT OPTION;"
fi
database=""
if [ -n "$MARIADB_DATABASE" ]; then
    note "Creating database $MARIADB_DATABASE"
    database="CREATE DATABASE IF NOT EXISTS $(sql_name "$MARIADB_DATABASE");"
fi
user=""
if [ -n "$MARIADB_USER" ]; then
    note "Creating user $MARIADB_USER"
    if [ -n "$MARIADB_PASSWORD_HASH" ]; then
        identity="IDENTIFIED BY PASSWORD $(sql_string "$MARIADB_PASSWORD_HASH")"
    else
        identity="IDENTIFIED BY $(sql_string "$MARIADB_PASSWORD")"
    fi
    user="CREATE USER $(sql_string "$MARIADB_USER")@'%' $identity;"
    if [ -n "$MARIADB_DATABASE" ]; then
        note "Giving user $MARIADB_USER access to schema $MARIADB_DATABASE"
        # In GRANT, _ and % in a database name are wildcards.
        user+="
GRANT ALL ON $(sql_name "${MARIADB_DATABASE//_/\\_}").* TO $(sql_string "$MARIADB_USER")@'%';"
    fi
fi

note "Securing system users (equivalent to running mysql_secure_installation)"
sql --database=mysql <<SQL
SET @@SESSION.SQL_LOG_BIN = 0;
SET @@SESSION.SQL_MODE = REPLACE(@@SESSION.SQL_MODE, 'NO_BACKSLASH_ESCAPES', '');
DROP USER IF EXISTS root@'127.0.0.1', root@'::1', ''@'localhost';
EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS root@''', @@hostname, '''');
EXECUTE IMMEDIATE CONCAT('DROP USER IF EXISTS ''''@''', @@hostname, '''');
$root_local
$root_remote
$database
$user
SQL
root_password=$MARIADB_ROOT_PASSWORD

sql_into_database=(sql)
if [ -n "$MARIADB_DATABASE" ]; then
    sql_into_database+=(--database="$MARIADB_DATABASE")
fi
echo
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
        *.sql) note "$0: running $file"; "${sql_into_database[@]}" <"$file" ;;
        *.sql.bz2) note "$0: running $file"; bunzip2 -c "$file" | "${sql_into_database[@]}" ;;
        *.sql.gz) note "$0: running $file"; gunzip -c "$file" | "${sql_into_database[@]}" ;;
        *.sql.xz) note "$0: running $file"; xzcat "$file" | "${sql_into_database[@]}" ;;
        *.sql.zst) note "$0: running $file"; zstd -dc "$file" | "${sql_into_database[@]}" ;;
        *) note "$0: ignoring $file" ;;
    esac
done
if [ -n "$root_local_later" ]; then
    sql --database=mysql -e "$root_local_later"
fi

note "Stopping temporary server"
kill "$server"
wait "$server" || fail "the temporary server did not stop cleanly; its log is above"
note "Temporary server stopped"

echo
note "MariaDB init process done. Ready for start up."
echo
exec "$@"
