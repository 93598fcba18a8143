#!/usr/bin/env bash
# The compose lab end to end, with exactly the commands docs/compose.md gives:
#   base image -> wheelhouse on the host for the base image's Python -> the image, built once
#   (offline) -> up -d -> cross-zone traffic + /license
#   -> isolation (what a container holds and reaches; etcd refuses a client without a certificate)
#   -> restart global -> kill zone-1 && up -d zone-1 -> down && up -d (volumes kept) -> down -v.
# ZONEMESH_COMPOSE_HA=1: the same with compose/docker-compose.ha.yaml over the base file (2 global and
#   2 zone-1 replicas on a 3-member etcd with etcd auth), plus, before the restarts, a leader kill of
#   zone-1 and of global: the leader found with GET /status/leader, `kill`ed, the other replica leads,
#   traffic, fail-over and both zones online again, then the killed one back with `up -d`.
# Every wait is bounded. Needs a working docker daemon and docker compose v2 or docker-compose v1.
# Env: ZONEMESH_BASE_IMAGE (default: python:3.11-slim if present or pullable, else a debootstrap
# image built here from ZONEMESH_DEBIAN_MIRROR, default http://deb.debian.org/debian),
# ZONEMESH_FRONTEND_PORT / ZONEMESH_GLOBAL_API_PORT (published on 127.0.0.1), KEEP_LAB=1 to
# leave the lab running on success.
set -euo pipefail
cd "$(dirname "$0")/.."

FILES=(-f compose/docker-compose.yaml)
if [ "${ZONEMESH_COMPOSE_HA:-0}" = 1 ]; then
  FILES+=(-f compose/docker-compose.ha.yaml)
fi
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose "${FILES[@]}")
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose "${FILES[@]}")
else
  echo "compose/test.sh: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi
FRONTEND="http://127.0.0.1:${ZONEMESH_FRONTEND_PORT:-17080}/"
GLOBAL="http://127.0.0.1:${ZONEMESH_GLOBAL_API_PORT:-17681}"
ZONE1="http://127.0.0.1:${ZONEMESH_ZONE1_API_PORT:-17682}"
ZONE2="http://127.0.0.1:${ZONEMESH_ZONE2_API_PORT:-17683}"
# The HA file's further replicas (docs/compose.md, Ports): service=API URL, for GET /status/leader.
GLOBAL_REPLICAS=("global=$GLOBAL" "global-2=http://127.0.0.1:${ZONEMESH_GLOBAL2_API_PORT:-17684}")
ZONE1_REPLICAS=("zone-1=$ZONE1" "zone-1-2=http://127.0.0.1:${ZONEMESH_ZONE1_2_API_PORT:-17685}")
PY=${PYTHON:-python3}

log() { printf '[compose/test.sh %s] %s\n' "$(date -u +%T)" "$*"; }
now() { date +%s.%N; }
since() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

dump_logs() {
  log "FAILED: container states and last log lines"
  "${compose[@]}" ps || true
  "${compose[@]}" logs --tail=40 || true
}
cleanup() {
  local code=$?
  rm -f "$LAST_ANSWER"
  if [ "$code" -ne 0 ]; then dump_logs; fi
  if [ "$code" -ne 0 ] || [ "${KEEP_LAB:-0}" != 1 ]; then
    log "tearing down: ${compose[*]} down -v"
    timeout 180 "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  exit "$code"
}

# wait_for SECONDS WHAT COMMAND...: retry COMMAND every 2s until it succeeds, or fail after SECONDS.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$(($(date +%s) + limit))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 2
  done
  log "timed out after ${limit}s waiting for: $what"
  return 1
}

# served_by ZONE|any: the documented curl answers 200 with a backend's answer, from a backend in ZONE.
# The answer is kept in $LAST_ANSWER, to show it.
LAST_ANSWER=$(mktemp)
served_by() {
  local body
  body=$(curl -fsS --max-time 10 "$FRONTEND") || return 1
  printf '%s\n' "$body" >"$LAST_ANSWER"
  "$PY" -c 'import json, sys; z = json.loads(sys.argv[1])["upstream"]["zone"]; sys.exit(sys.argv[2] not in (z, "any"))' \
    "$body" "$1"
}

# only_from ZONE N: N calls in a row are all answered by a backend in ZONE.
only_from() {
  local i
  for i in $(seq "$2"); do served_by "$1" || return 1; done
}

# zones_online: global sees both zones online (their KDS streams are up).
zones_online() {
  curl -fsS --max-time 5 "$GLOBAL/zones+insights" | "$PY" -c '
import json, sys
items = json.load(sys.stdin)["items"]
online = {i["name"] for i in items if i.get("zoneInsight", {}).get("online", i.get("online"))}
sys.exit(not {"zone-1", "zone-2"} <= online)'
}

license_ok() {
  curl -fsS --max-time 5 "$1/license" | "$PY" -c 'import json, sys; b = json.load(sys.stdin); assert "demo" in b, b'
}

# snapshot: the resources global and the zones hold, to compare across restarts ("lose nothing").
snapshot() {
  local url path
  for url in "$GLOBAL" "$ZONE1" "$ZONE2"; do
    for path in /meshes /meshes/default/meshtrafficpermissions /meshes/default/dataplanes /zones /zoneingresses \
      /zoneegresses; do
      printf '%s%s ' "$url" "$path"
      curl -fsS --max-time 5 "$url$path" | "$PY" -c \
        'import json, sys; b = json.load(sys.stdin); print(sorted(i.get("name") for i in b.get("items", [])))' ||
        echo "unavailable"
    done
  done
}

# volumes_of SERVICE: the compose volumes its container mounts, without the project prefix, sorted.
volumes_of() {
  local id project
  id=$("${compose[@]}" ps -q "$1")
  project=$(docker inspect --format '{{index .Config.Labels "com.docker.compose.project"}}' "$id")
  docker inspect --format '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}' "$id" |
    "$PY" -c 'import sys; p = sys.argv[1] + "_"; print(" ".join(sorted(n.removeprefix(p) for n in sys.stdin.read().split())))' \
      "$project"
}

# addresses_of SERVICE PORT...: ADDRESS:PORT for each of its container's addresses (one per network).
addresses_of() {
  local service=$1 ip port
  shift
  for ip in $(docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' \
    "$("${compose[@]}" ps -q "$service")"); do
    for port in "$@"; do printf '%s:%s ' "$ip" "$port"; done
  done
}

# expect_volumes SERVICE "VOLUME ...": its container mounts exactly these volumes.
expect_volumes() {
  local got
  got=$(volumes_of "$1")
  if [ "$got" != "$2" ]; then
    log "$1 mounts: $got; expected: $2"
    return 1
  fi
}

# isolation: what docs/compose.md says each container can read and reach, checked on the running lab.
isolation() {
  expect_volumes frontend "frontend-token zone-1-ca"
  expect_volumes backend-zone-2 "backend-zone-2-token zone-2-ca"
  expect_volumes zone-2 "global-ca zone-2-admin zone-2-ca zone-2-data zone-2-token"
  expect_volumes etcd "etcd-data etcd-tls"
  # From inside the frontend container: its own token and zone-1's certificate, nothing else; no
  # name or address of etcd, global or zone-2's control plane answers; zone-1's xDS does.
  # shellcheck disable=SC2046
  "${compose[@]}" exec -T frontend python - $(addresses_of etcd 2379) $(addresses_of global 5681 5685) \
    $(addresses_of zone-2 5681 5678) <<'EOF'
import os, socket, sys
problems = []
dirs = ("/token", "/trust", "/admin", "/tokens", "/export", "/etcd-tls", "/kds-tls", "/xds-tls", "/certs/etcd",
        "/certs/global", "/certs/kds", "/certs/zone-etcd", "/certs/etcd-root", "/certs/xds")
found = sorted(os.path.join(d, f) for d in dirs if os.path.isdir(d) for f in os.listdir(d))
if found != ["/token/token", "/trust/zone-1-xds.crt"]:
    problems.append(f"files: {found}")
for name in ("etcd", "global", "zone-2"):
    try:
        socket.getaddrinfo(name, None)
        problems.append(f"{name} resolves")
    except socket.gaierror:
        pass
if len(sys.argv) < 1 + 1 + 2 + 2:  # at least one address each of etcd, global and zone-2, with their ports
    problems.append(f"too few addresses to try: {sys.argv[1:]}")
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        problems.append(f"{target} answers")
    except OSError:
        pass
socket.create_connection(("zone-1", 5678), timeout=5).close()  # what it must reach, it reaches
print("; ".join(problems) or "frontend: only its own token; etcd, global and zone-2's control plane unreachable")
sys.exit(bool(problems))
EOF
  # etcd takes global's client certificate and refuses a client without one (tried from global:
  # no other container reaches etcd).
  "${compose[@]}" exec -T global python - <<'EOF'
import socket, ssl, sys

def version(with_cert: bool) -> bytes:
    context = ssl.create_default_context(cafile="/etcd-tls/ca.crt")
    if with_cert:
        context.load_cert_chain("/etcd-tls/client.crt", "/etcd-tls/client.key")
    try:
        with socket.create_connection(("etcd", 2379), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="etcd") as tls:
                tls.sendall(b"GET /version HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")
                answer = b""
                while len(answer) < 65536 and (chunk := tls.recv(4096)):  # until etcd closes
                    answer += chunk
                return answer
    except OSError as exc:  # ssl.SSLError is an OSError
        return repr(exc).encode()

with_cert, without = version(True), version(False)
print(f"etcd with global's certificate: {with_cert[:60]!r}; without a certificate: {without[:80]!r}")
sys.exit(not (b"etcdserver" in with_cert and b"etcdserver" not in without))
EOF
}

# cross_zone (fail-over): with zone-1's backend stopped, every call from zone-1's frontend goes to
# the backend in zone-2 (through zone-2's ingress); then zone-1's backend comes back and answers again.
cross_zone() {
  local stopped
  "${compose[@]}" stop backend-zone-1
  stopped=$(now)
  wait_for 90 "every call from zone-1's frontend answered by zone-2 (5 in a row)" only_from zone-2 5
  log "fail-over: 5 calls in a row answered by zone-2 $(since "$stopped")s after backend-zone-1 stopped"
  cat "$LAST_ANSWER"
  "${compose[@]}" start backend-zone-1
  wait_for 90 "frontend -> backend in zone-1 again" served_by zone-1
}

# leader_of SERVICE=URL...: the service whose GET /status/leader says "leader": true (exactly one).
leader_of() {
  local pair found=()
  for pair in "$@"; do
    if curl -fsS --max-time 5 "${pair#*=}/status/leader" 2>/dev/null |
      "$PY" -c 'import json, sys; sys.exit(json.load(sys.stdin).get("leader") is not True)'; then
      found+=("${pair%%=*}")
    fi
  done
  [ "${#found[@]}" -eq 1 ] || return 1
  echo "${found[0]}"
}

# leads_now SERVICE SERVICE=URL...: SERVICE is the one replica that leads.
leads_now() {
  local expected=$1
  shift
  [ "$(leader_of "$@")" = "$expected" ]
}

# kill_leader WHAT SERVICE=URL...: kill -9 the replica that leads (GET /status/leader); the other
# leads, and the lab's checks pass (traffic, fail-over across zones, zones online); then the
# killed one comes back (up -d) and the lab checks pass again.
kill_leader() {
  local what=$1 leader other pair start
  shift
  wait_for 60 "one $what replica leading" leader_of "$@"
  leader=$(leader_of "$@")
  for pair in "$@"; do
    if [ "${pair%%=*}" != "$leader" ]; then other=${pair%%=*}; fi
  done
  log "kill the $what leader: $leader (GET /status/leader); $other should lead"
  start=$(now)
  timeout 60 "${compose[@]}" kill "$leader"
  wait_for 60 "$other to lead $what" leads_now "$other" "$@"
  log "$other leads $what $(since "$start")s after the kill of $leader"
  wait_for 120 "traffic with $leader killed" served_by any
  wait_for 120 "zones online at global with $leader killed" zones_online
  cross_zone
  timeout 300 "${compose[@]}" up -d "$leader"
  wait_for 120 "$leader back (ready)" curl -fsS --max-time 5 "$(url_of "$leader" "$@")/license"
  wait_for 120 "traffic after $leader came back" served_by any
  wait_for 120 "zones online at global after $leader came back" zones_online
}

# url_of SERVICE SERVICE=URL...
url_of() {
  local name=$1 pair
  shift
  for pair in "$@"; do
    if [ "${pair%%=*}" = "$name" ]; then echo "${pair#*=}"; fi
  done
}

if [ -z "${ZONEMESH_BASE_IMAGE:-}" ]; then
  if docker image inspect python:3.11-slim >/dev/null 2>&1 || timeout 60 docker pull -q python:3.11-slim >/dev/null 2>&1; then
    ZONEMESH_BASE_IMAGE=python:3.11-slim
  else
    ZONEMESH_BASE_IMAGE=zonemesh-base:local
    if ! docker image inspect "$ZONEMESH_BASE_IMAGE" >/dev/null 2>&1; then
      if ! command -v debootstrap >/dev/null 2>&1; then
        echo "compose/test.sh: no registry reachable and no debootstrap to build a base image:" \
          "apt-get install debootstrap (docs/compose.md), or set ZONEMESH_BASE_IMAGE" >&2
        exit 1
      fi
      mirror=${ZONEMESH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
      log "no registry reachable: building $ZONEMESH_BASE_IMAGE with debootstrap from $mirror"
      rootfs=$(mktemp -d)
      timeout 600 debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "$mirror" >/dev/null
      tar -C "$rootfs" -c . | docker import - "$ZONEMESH_BASE_IMAGE" >/dev/null
      rm -rf "$rootfs"
    fi
  fi
fi
export ZONEMESH_BASE_IMAGE
# The wheelhouse holds wheels for the base image's Python, whatever the host's (docs/compose.md).
image_python=$(docker run --rm --entrypoint python3 "$ZONEMESH_BASE_IMAGE" -c \
  'import sys; print("%d.%d" % sys.version_info[:2])')
log "building the wheelhouse on the host for $ZONEMESH_BASE_IMAGE's Python $image_python"
mkdir -p build
if ! "$PY" compose/wheelhouse.py --python "$image_python" >build/compose-wheel.log 2>&1; then
  cat build/compose-wheel.log >&2
  exit 1
fi
log "building the zonemesh image on $ZONEMESH_BASE_IMAGE"
timeout 900 "${compose[@]}" build >build/compose-build.log 2>&1 || { tail -40 build/compose-build.log >&2; exit 1; }

trap cleanup EXIT
"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
log "up -d"
start=$(now)
timeout 600 "${compose[@]}" up -d
log "up -d returned after $(since "$start")s"
# up -d returns once every service has started; init then issues the tokens and the proxies start.
wait_for 240 "the documented curl to answer" served_by any
log "first successful curl $(since "$start")s after up -d"
cat "$LAST_ANSWER"
# The lab's mesh spreads calls over the zones (routing.localityAwareLoadBalancing: false).
wait_for 60 "a backend in zone-2 to answer zone-1's frontend" served_by zone-2
log "first answer from the backend in zone-2 $(since "$start")s after up -d"
cat "$LAST_ANSWER"
cross_zone
wait_for 60 "zone-1 and zone-2 online at global" zones_online
for url in "$GLOBAL" "$ZONE1" "$ZONE2"; do license_ok "$url"; done
log "traffic across zones and /license on global and both zones: OK"
isolation
log "isolation: each container holds only its own credentials, apps reach neither etcd nor global, etcd wants a client certificate: OK"
before=$(snapshot)
echo "$before"
if grep -q unavailable <<<"$before"; then exit 1; fi

if [ "${ZONEMESH_COMPOSE_HA:-0}" = 1 ]; then
  kill_leader zone-1 "${ZONE1_REPLICAS[@]}"
  kill_leader global "${GLOBAL_REPLICAS[@]}"
  wait_for 60 "the same resources after the leader kills" test "$(snapshot)" = "$before"
  log "leader kills (zone-1, global): the other replica led, traffic and both zones online throughout: OK"
fi

log "restart global"
start=$(now)
timeout 120 "${compose[@]}" restart global
wait_for 120 "global /license after restart" license_ok "$GLOBAL"
wait_for 120 "traffic after restart global" served_by any
log "traffic back $(since "$start")s after restart global"
wait_for 120 "zones online at global after restart global" zones_online
log "both zones online at global $(since "$start")s after restart global"
cross_zone
wait_for 60 "the same resources after restart global" test "$(snapshot)" = "$before"

log "kill zone-1 && up -d zone-1"
start=$(now)
timeout 60 "${compose[@]}" kill zone-1
timeout 300 "${compose[@]}" up -d zone-1
wait_for 120 "zone-1 /license after kill" license_ok "$ZONE1"
wait_for 120 "traffic after kill zone-1" served_by any
log "traffic back $(since "$start")s after kill zone-1"
wait_for 120 "zone-1 online at global after kill" zones_online
log "both zones online at global $(since "$start")s after kill zone-1"
cross_zone
wait_for 60 "the same resources after kill zone-1" test "$(snapshot)" = "$before"

log "down (volumes kept) && up -d"
start=$(now)
timeout 180 "${compose[@]}" down
timeout 600 "${compose[@]}" up -d
wait_for 120 "traffic after down && up -d" served_by any
log "traffic back $(since "$start")s after down && up -d"
wait_for 120 "zones online at global after down && up -d" zones_online
cross_zone
wait_for 60 "the same resources after down && up -d" test "$(snapshot)" = "$before"

what="up, cross-zone traffic, /license, isolation, restart global, kill zone-1, down && up -d"
if [ "${ZONEMESH_COMPOSE_HA:-0}" = 1 ]; then what="HA file; $what, leader kills of zone-1 and global"; fi
log "PASS: compose lab ($what)"
