#!/usr/bin/env bash
# Load benchmark: the gateway against uWSGI, gunicorn and granian (all from pip) in one run,
# on loopback only, bounded in time. Not a test: it never fails on a timing.
#
#   bash benches/load/load.sh [SECONDS per run, default 5] [THREADS, default 2]
#
# Each server runs one process with THREADS threads at its best documented settings
# (uWSGI --http-socket with --http-keepalive, gunicorn's gthread worker, granian's WSGI
# interface); wrk -t1 -c32 drives it. Printed: requests/s, p99 latency and the server's
# RSS, with ratios against uWSGI.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-5}
THREADS=${2:-2}
HERE=benches/load
DJSITE=wsgi-host/tests/apps/djsite
command -v wrk >/dev/null || { echo "wrk is missing: bash scripts/install-deps.sh"; exit 1; }
cargo build -q --release -p gateway
GATEWAY=target/release/gateway
PY=$(command -v python3)
BIN=$(dirname "$(readlink -f "$(command -v python3)")")
PYBIN=$("$PY" -c 'import sys,os;print(os.path.dirname(sys.executable))')
PORT=$((20000 + RANDOM % 20000))
OUT=$(mktemp -d)
trap 'kill -KILL $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

start() { # name app-kind
  local name=$1 kind=$2 addr=127.0.0.1:$PORT mod file dir
  if curl -s -o /dev/null "http://$addr/"; then echo "port $PORT is taken"; return 1; fi
  if [ "$kind" = django ]; then dir=$DJSITE; mod=mysite.wsgi; file=$DJSITE/mysite/wsgi.py
  else dir=$HERE; mod=bench_app; file=$HERE/bench_app.py; fi
  case $name in
    gateway) (cd "$dir" && exec "$OLDPWD/$GATEWAY" --http-socket "$addr" --module "$mod" --threads "$THREADS" --disable-logging) ;;
    uwsgi)   (cd "$dir" && exec "$PYBIN/uwsgi" --http-socket "$addr" --module "$mod" --threads "$THREADS" --processes 1 --http-keepalive --disable-logging --buffer-size 65535) ;;
    gunicorn) (cd "$dir" && exec "$PYBIN/gunicorn" -b "$addr" -w 1 --threads "$THREADS" -k gthread --keep-alive 5 "$mod:application") ;;
    granian) (cd "$dir" && exec "$PYBIN/granian" --interface wsgi --host 127.0.0.1 --port "$PORT" --workers 1 --blocking-threads "$THREADS" "$mod:application") ;;
  esac >"$OUT/$name.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "http://$addr/"; then return 0; fi
    sleep 0.1
  done
  echo "$name did not start:"; tail -5 "$OUT/$name.log"; return 1
}

stop() { # SIGINT stops all four (SIGTERM makes uWSGI reload); SIGKILL what is left
  local pid=$1 kids
  kids=$(pgrep -P "$pid" 2>/dev/null || true)
  kill -INT "$pid" $kids 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" $kids 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

rss_kb() { # sum of RSS of a process and its children
  local pids
  pids=$(pgrep -P "$1" 2>/dev/null || true)
  ps -o rss= -p "$1" $pids 2>/dev/null | awk '{s+=$1} END {print s+0}'
}

run() { # server kind path [lua]
  local name=$1 kind=$2 path=$3 lua=${4:-}
  PORT=$((PORT + 1))
  start "$name" "$kind" || { echo "$name $kind$path - - -" >>"$OUT/results"; return; }
  local url="http://127.0.0.1:$PORT$path" args=(-t1 -c32 -d"${DUR}s" --latency)
  [ -n "$lua" ] && args+=(-s "$HERE/$lua")
  wrk -t1 -c8 -d1s ${lua:+-s "$HERE/$lua"} "$url" >/dev/null 2>&1 || true   # warm-up
  local res rps p99 rss
  res=$(wrk "${args[@]}" "$url" 2>&1)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
  p99=$(awk '$1=="99%" {print $2}' <<<"$res")
  rss=$(rss_kb "$SERVER_PID")
  stop "$SERVER_PID"
  echo "$name $kind$path ${rps:-0} ${p99:-?} $rss" >>"$OUT/results"
}

for case in "app /hello" "app /echo post64k.lua" "app /stream" "django /" "django /items/"; do
  set -- $case
  for server in uwsgi gateway gunicorn granian; do
    run "$server" "$1" "$2" "${3:-}"
  done
done

echo
echo "wrk -t1 -c32 -d${DUR}s, one process, $THREADS threads each; ratios against uWSGI"
printf '%-18s %-9s %12s %8s %10s %8s %9s\n' case server "req/s" "x uWSGI" "p99" "RSS MB" "x uWSGI"
awk '
  { name=$1; c=$2; rps[c,name]=$3; p99[c,name]=$4; rss[c,name]=$5; if (!(c in seen)) { seen[c]=1; order[++n]=c } }
  END {
    split("uwsgi gateway gunicorn granian", servers, " ")
    for (i=1; i<=n; i++) { c=order[i]
      for (j=1; j<=4; j++) { s=servers[j]
        base=rps[c,"uwsgi"]+0; r=rps[c,s]+0; m=rss[c,s]/1024; bm=rss[c,"uwsgi"]/1024
        printf "%-18s %-9s %12.0f %8s %10s %8.1f %9s\n", c, s, r, (base>0?sprintf("%.2f",r/base):"-"), p99[c,s], m, (bm>0?sprintf("%.2f",m/bm):"-")
      }
    }
  }' "$OUT/results"
