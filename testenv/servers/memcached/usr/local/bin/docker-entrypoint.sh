#!/bin/sh
# The entrypoint of the test environment's memcached image (Debian's memcached), as the
# official image's: arguments that start with "-" are memcached's ("-m 64" means
# "memcached -m 64"); anything else runs as given. The image runs as the memcache user.
set -e
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- memcached "$@"
fi
exec "$@"
