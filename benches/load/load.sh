#!/usr/bin/env bash
# Load benchmark: the gateway against uWSGI, gunicorn and granian (all from pip) in one run,
# on loopback only, bounded in time. Not a test: it never fails on a timing.
#
#   bash benches/load/load.sh [SECONDS per run, default 5] [THREADS, default 2] [PROCESSES, default "1"]
#   ROUNDS=3 bash benches/load/load.sh ...   # each case 3 times, servers taking turns; medians
#
# For each process count N (e.g. "1 2 4"), each server runs N processes with THREADS
# threads at its best documented settings (uWSGI --http-socket with --http-keepalive, and
# --master --thunder-lock when N > 1; gunicorn's gthread worker; granian's WSGI interface;
# the gateway with --processes N); wrk -t1 -c32 drives it. uWSGI's --http-socket closes
# the connection after every answer even with --http-keepalive, so wrk reconnects for each
# of its requests. Its keep-alive socket, --http11-socket, is not used: each of its threads
# keeps the connection it holds, so with 32 connections and N x THREADS threads the other
# connections get no answer while those stay open (at N = 4, 8 connections were served
# 1,288-1,779 times each in 3 s, the 24 others once), and wrk reports only the answered
# ones. N = 1 runs every app; N > 1 runs
# hello world and the Django pages. SERVERS="gateway granian" runs only those. Printed: requests/s, p99 latency, the summed RSS and
# PSS of all the server's processes, with ratios against uWSGI; for N > 1 also how the
# requests spread over the workers (from the stats servers of uWSGI and the gateway).
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-5}
THREADS=${2:-2}
PROCESSES=${3:-1}
N=1
HERE=benches/load
DJSITE=wsgi-host/tests/apps/djsite
command -v wrk >/dev/null || { echo "wrk is missing: bash scripts/install-deps.sh"; exit 1; }
cargo build -q --release -p gateway
GATEWAY=target/release/gateway
PY=$(command -v python3)
BIN=$(dirname "$(readlink -f "$(command -v python3)")")
PYBIN=$("$PY" -c 'import sys,os;print(os.path.dirname(sys.executable))')
PORT=$((20000 + RANDOM % 10000))   # below the ephemeral range; stats servers at PORT-10000
OUT=$(mktemp -d)
trap 'kill -KILL $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT

start() { # name app-kind
  local name=$1 kind=$2 addr=127.0.0.1:$PORT mod file dir
  if curl -s -o /dev/null "http://$addr/"; then echo "port $PORT is taken"; return 1; fi
  if [ "$kind" = django ]; then dir=$DJSITE; mod=mysite.wsgi; file=$DJSITE/mysite/wsgi.py
  else dir=$HERE; mod=bench_app; file=$HERE/bench_app.py; fi
  local multi=() stats=127.0.0.1:$((PORT - 10000))
  case $name in
    gateway) [ "$N" -gt 1 ] && multi=(--processes "$N" --stats "$stats")
             (cd "$dir" && exec "$OLDPWD/$GATEWAY" --http-socket "$addr" --module "$mod" --threads "$THREADS" --disable-logging "${multi[@]}") ;;
    uwsgi)   [ "$N" -gt 1 ] && multi=(--master --thunder-lock --stats "$stats")
             (cd "$dir" && exec "$PYBIN/uwsgi" --http-socket "$addr" --module "$mod" --threads "$THREADS" --processes "$N" --http-keepalive --disable-logging --buffer-size 65535 "${multi[@]}") ;;
    gunicorn) (cd "$dir" && exec "$PYBIN/gunicorn" -b "$addr" -w "$N" --threads "$THREADS" -k gthread --keep-alive 5 "$mod:application") ;;
    granian) (cd "$dir" && exec "$PYBIN/granian" --interface wsgi --host 127.0.0.1 --port "$PORT" --workers "$N" --blocking-threads "$THREADS" "$mod:application") ;;
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

tree() { # a process and all its descendants
  local p
  echo "$1"
  for p in $(pgrep -P "$1" 2>/dev/null || true); do tree "$p"; done
}

mem_kb() { # "RSS PSS": sums over the process tree, in kB
  local p rss=0 pss=0 r s
  for p in $(tree "$1"); do
    r=$(awk '/^Rss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    s=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    rss=$((rss + ${r:-0})); pss=$((pss + ${s:-0}))
  done
  echo "$rss $pss"
}

spread() { # "min/max" requests per worker, from a uWSGI-style stats server
  python3 - "$1" <<'PY' 2>/dev/null || echo "-"
import json, socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=5)
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
reqs = sorted(w["requests"] for w in json.loads(data)["workers"])
print("%d/%d" % (reqs[0], reqs[-1]))
PY
}

run() { # server kind path [lua]
  local name=$1 kind=$2 path=$3 lua=${4:-}
  PORT=$((PORT + 1))
  start "$name" "$kind" || { echo "$N $name $kind$path - - - - -" >>"$OUT/results"; return; }
  local url="http://127.0.0.1:$PORT$path" args=(-t1 -c32 -d"${DUR}s" --latency)
  [ -n "$lua" ] && args+=(-s "$HERE/$lua")
  wrk -t1 -c8 -d1s ${lua:+-s "$HERE/$lua"} "$url" >/dev/null 2>&1 || true   # warm-up
  local res rps p99 mem share=-
  res=$(wrk "${args[@]}" "$url" 2>&1)
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
  p99=$(awk '$1=="99%" {print $2}' <<<"$res")
  mem=$(mem_kb "$SERVER_PID")
  if [ "$N" -gt 1 ] && { [ "$name" = gateway ] || [ "$name" = uwsgi ]; }; then
    share=$(spread "127.0.0.1:$((PORT - 10000))")
  fi
  stop "$SERVER_PID"
  echo "$N $name $kind$path ${rps:-0} ${p99:-?} $mem $share" >>"$OUT/results"
}

for N in $PROCESSES; do
  if [ "$N" -gt 1 ]; then cases=("app /hello" "django /" "django /items/")
  else cases=("app /hello" "app /echo post64k.lua" "app /stream" "django /" "django /items/"); fi
  for case in "${cases[@]}"; do
    set -- $case
    for _ in $(seq 1 "${ROUNDS:-1}"); do
      for server in ${SERVERS:-uwsgi gateway gunicorn granian}; do
        run "$server" "$1" "$2" "${3:-}"
      done
    done
  done
done

echo
echo "wrk -t1 -c32 -d${DUR}s, $THREADS threads per process; ratios against uWSGI; memory summed over all processes${ROUNDS:+; medians of $ROUNDS rounds}"
printf '%-5s %-16s %-9s %10s %8s %9s %8s %8s %8s %9s\n' procs case server "req/s" "x uWSGI" "p99" "RSS MB" "PSS MB" "x uWSGI" "min/max"
awk -f "$HERE/stats.awk" -f /dev/stdin "$OUT/results" <<'AWK'
  { n=$1; name=$2; c=n " " $3; rps[c,name]=rps[c,name] " " $4; p99[c,name]=p99[c,name] " " us($5)
    rss[c,name]=rss[c,name] " " $6; pss[c,name]=pss[c,name] " " $7; sh[c,name]=$8
    if (!(c in seen)) { seen[c]=1; order[++k]=c } }
  END {
    split("uwsgi gateway gunicorn granian", servers, " ")
    for (i=1; i<=k; i++) { c=order[i]; split(c, parts, " ")
      for (j=1; j<=4; j++) { s=servers[j]
        if (!((c,s) in rps)) continue
        base=median(rps[c,"uwsgi"]); r=median(rps[c,s]); m=median(rss[c,s])/1024; p=median(pss[c,s])/1024; bp=median(pss[c,"uwsgi"])/1024
        printf "%-5s %-16s %-9s %10.0f %8s %9s %8.1f %8.1f %8s %9s\n", parts[1], parts[2], s, r, (base>0?sprintf("%.2f",r/base):"-"), latency(median(p99[c,s])), m, p, (bp>0?sprintf("%.2f",p/bp):"-"), sh[c,s]
      }
    }
  }
AWK
