#!/bin/sh
# First start: a cluster with POSTGRES_USER (password auth over the network) owning POSTGRES_DB.
set -eu
mkdir -p "$PGDATA" /run/postgresql
chown -R postgres:postgres "$PGDATA" /run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "$POSTGRES_PASSWORD" > /tmp/pwfile
    chown postgres /tmp/pwfile
    su postgres -c "initdb -D '$PGDATA' -U '$POSTGRES_USER' --pwfile=/tmp/pwfile -A scram-sha-256 -E UTF8 --locale=C.UTF-8"
    rm /tmp/pwfile
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # the set-up server listens on its socket only: nothing may take it for the real one
    su postgres -c "pg_ctl -D '$PGDATA' -w start -o \"-c listen_addresses=''\""
    PGPASSWORD="$POSTGRES_PASSWORD" su postgres -c \
        "psql -h /run/postgresql -U '$POSTGRES_USER' -d postgres -c 'CREATE DATABASE \"$POSTGRES_DB\"'"
    su postgres -c "pg_ctl -D '$PGDATA' -w stop"
fi
exec su postgres -c "exec postgres -D '$PGDATA' -c listen_addresses='*'"
