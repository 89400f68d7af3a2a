#!/usr/bin/env bash
# Run a command with a throwaway PostgreSQL server:   tests/with_postgres.sh make test
#
# Starts a server from the installed PostgreSQL binaries on a free 127.0.0.1 port, in a new temporary folder,
# with a user `twohead` and a random password; exports its URL as TWOHEAD_TEST_POSTGRES_URL (the tests that need a
# real PostgreSQL read it, and skip with a message when it is unset); runs the command; stops the server and
# removes the folder when the command exits, whatever its status. As root the server runs as the `postgres` user
# (PostgreSQL refuses to run as root). Without PostgreSQL binaries it warns and runs the command anyway.
set -euo pipefail

bindir=""
if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
  bindir="$(pg_config --bindir)"
else
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/initdb" ] && bindir="$d"; done
fi
if [ -z "$bindir" ]; then
  echo "with_postgres: no PostgreSQL binaries (initdb) found; the PostgreSQL tests will be skipped" >&2
  exec "$@"
fi

as_db_user() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  as_db_user() { runuser -u postgres -- "$@"; }
fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/twohead-pg.XXXXXX")"
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
password="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"

stop() {
  as_db_user "$bindir/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT

printf '%s\n' "$password" >"$dir/pw"
[ "$(id -u)" = 0 ] && chown postgres: "$dir/pw"
as_db_user "$bindir/initdb" -D "$dir/data" -U twohead --pwfile="$dir/pw" --auth-host=scram-sha-256 --auth-local=trust \
  >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
rm -f "$dir/pw"
as_db_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null \
  || { cat "$dir/server.log" >&2; exit 1; }
as_db_user "$bindir/createdb" -h "$dir" -p "$port" -U twohead twohead

export TWOHEAD_TEST_POSTGRES_URL="postgresql+psycopg2://twohead:${password}@127.0.0.1:${port}/twohead"
echo "with_postgres: PostgreSQL on 127.0.0.1:$port (TWOHEAD_TEST_POSTGRES_URL)" >&2
set +e
"$@"
status=$?
exit "$status"
