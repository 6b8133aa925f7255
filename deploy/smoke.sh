#!/usr/bin/env bash
# The deployment, started for real (make deploy-smoke): the image built from deploy/Dockerfile, the
# compose topology of docker-compose.yml brought up with podman (PostgreSQL, a Ray head with no
# training CPUs, two Ray worker containers, the API attached to the head, Prometheus), then
# deploy/smoke_checks.py through the API only: SimCLR on 2 workers (one per worker container)
# with one worker container killed mid-run, a linear evaluation of its checkpoint, and every
# Grafana panel's query against the live Prometheus. Prints a summary and tears everything down.
#
# Needs root on a Debian machine (it installs podman, runc, debootstrap, curl, openssl and
# python3-venv when missing) and the package registries; deploy/local/compose.podman.yml says what
# it replaces and why. About 8 minutes on 2 cores, 4.5 once the images are built. SMOKE_KEEP=1
# leaves the stack running.
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT=simclr-smoke
STATE=.smoke
BASE=localhost/debian:bookworm
export CONTAINERS_CONF="$PWD/deploy/local/containers.conf"
mkdir -p "$STATE" && chmod 700 "$STATE"
declare -A took
step() { echo; echo "== $1"; STEP_START=$SECONDS; STEP_NAME=$1; }
done_step() { took[$STEP_NAME]=$((SECONDS - STEP_START)); }

step "tools"
missing=()
for tool in podman runc debootstrap curl openssl; do command -v "$tool" >/dev/null || missing+=("$tool"); done
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y --no-install-recommends "${missing[@]}"
fi
if ! command -v podman-compose >/dev/null; then
    [ -x "$STATE/venv/bin/podman-compose" ] \
        || { python3 -m venv "$STATE/venv" && "$STATE/venv/bin/pip" install -q podman-compose; }
    PATH="$PWD/$STATE/venv/bin:$PATH"
fi
podman --version && podman-compose --version | tail -1
done_step

step "images"
if ! podman image exists "$BASE"; then  # no registry: a Debian base from Debian's packages
    rm -rf "$STATE/rootfs"
    debootstrap --variant=minbase bookworm "$STATE/rootfs" http://deb.debian.org/debian >/dev/null
    tar -C "$STATE/rootfs" -c . | podman import - "$BASE"
    rm -rf "$STATE/rootfs"
fi
# Where pip reads from a local mirror and a proxy's certificate (as on the machines this project is
# built on), the build sees the same: mounted for the build only, the Dockerfile unchanged.
build_volumes=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    build_volumes+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/host-ca.crt:ro)
    printf '[global]\ncert = /etc/ssl/certs/host-ca.crt\n' > "$STATE/pip.conf"
    mirrors=()
    for mirror in /opt/pypi /opt/pypi-more; do
        [ -d "$mirror/simple" ] && build_volumes+=(-v "$mirror:$mirror:ro") \
            && mirrors+=("file://$mirror/simple")
    done
    [ ${#mirrors[@]} = 0 ] || printf 'extra-index-url = %s\n' "${mirrors[*]}" >> "$STATE/pip.conf"
    if [ -f /etc/xdg/pip/constraints.txt ]; then
        build_volumes+=(-v /etc/xdg/pip/constraints.txt:/etc/pip-constraints.txt:ro)
        printf 'constraint = /etc/pip-constraints.txt\n' >> "$STATE/pip.conf"
    fi
    build_volumes+=(-v "$PWD/$STATE/pip.conf:/etc/pip.conf:ro")
fi
podman build --network host --build-arg BASE_IMAGE="$BASE" "${build_volumes[@]}" \
    -f deploy/Dockerfile -t localhost/simclr-at-scale:latest .
podman build --network host --build-arg BASE_IMAGE="$BASE" \
    -f deploy/local/postgres.Containerfile -t localhost/postgres-debian:15 deploy/local
podman build --network host --build-arg BASE_IMAGE="$BASE" \
    -f deploy/local/prometheus.Containerfile -t localhost/prometheus-debian:latest deploy/local
podman image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep localhost/
done_step

# secrets of this run only (the user's .env is not read), and the API token as the file
# Prometheus reads
# (the secrets go through files, never a command line that ps shows)
umask 077
for name in ray-token api-token internal-token postgres grafana; do
    printf 's/change-me-%s/%s/\n' "$name" "$(openssl rand -hex 16)"
done > "$STATE/secrets.sed"
sed -f "$STATE/secrets.sed" .env.example > "$STATE/env"
grep '^SIMCLR_API_TOKEN=' "$STATE/env" | cut -d= -f2- | tr -d '\n' > "$STATE/api_token"
umask 022
compose() { podman-compose -p "$PROJECT" --env-file "$STATE/env" \
    -f docker-compose.yml -f deploy/local/compose.podman.yml "$@"; }
teardown() {  # every step, whatever fails (it runs from the EXIT trap too)
    set +e
    compose down -v >/dev/null 2>&1
    podman ps -aq --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman rm -f --depend >/dev/null
    podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT" | xargs -r podman volume rm >/dev/null
    podman pod rm -f --ignore "pod_$PROJECT" >/dev/null
    podman network exists "${PROJECT}_default" && podman network rm "${PROJECT}_default" >/dev/null
    true
}
[ "${SMOKE_KEEP:-0}" = 1 ] || trap 'status=$?; teardown; exit $status' EXIT
teardown; set -e
# wait_for SECONDS WHAT COMMAND...: until COMMAND succeeds, or stop the run saying what never came
wait_for() {
    local seconds=$1 what=$2; shift 2
    for _ in $(seq "$seconds"); do "$@" && return 0; sleep 1; done
    echo "deploy smoke: FAILED: $what not within $seconds s" >&2
    podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}' >&2
    exit 1
}

step "up"
# without systemd podman runs no healthchecks: PostgreSQL first, until it answers
compose up -d postgres
wait_for 90 "PostgreSQL" podman exec "${PROJECT}_postgres_1" pg_isready -q -h 127.0.0.1 -U simclr -d simclr
compose up -d --scale ray-worker=2
api_ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/readyz)" = 200 ]; }
wait_for 240 "the API's /readyz" api_ready
# the container has the cluster's token in its environment; ray status reads it there
ray_status() { podman exec "${PROJECT}_ray-head_1" ray status 2>/dev/null || true; }
three_nodes() { [ "$(ray_status | grep -c ' node_')" = 3 ]; }
wait_for 120 "the head and both workers in ray status" three_nodes
podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}} {{.Status}}'
ray_status | sed -n '/^Active:/,/^Pending:/p;/Total Usage/,/object_store/p'
done_step

step "checks"
status=0
python3 deploy/smoke_checks.py --token-file "$STATE/api_token" --worker "${PROJECT}_ray-worker_2" \
    || status=$?
done_step

echo
echo "== summary ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs)"
for name in tools images up checks; do printf '%-8s %5d s\n' "$name" "${took[$name]:-0}"; done
[ "$status" = 0 ] && echo "deploy smoke: PASSED" || echo "deploy smoke: FAILED"
exit "$status"
