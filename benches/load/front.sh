#!/usr/bin/env bash
# Front benchmark: the gateway's front (--nginx-conf, one process) against nginx (one
# worker) with the same site, on loopback, bounded in time. Not a test: it never fails on
# a timing.
#
#   bash benches/load/front.sh [SECONDS per run, default 5]
#   ROUNDS=5 bash benches/load/front.sh ...   # each case 5 times, the two taking turns; medians
#
# Cases: a 4 KiB and a 1 MiB static file, `return 200`, and hello world passed over the
# uwsgi protocol on a unix socket to the same uWSGI backend. wrk -t1 -c32 drives each.
# Printed: requests/s, p99, and the front's CPU time per request (its utime+stime over the
# run divided by the requests), with the gateway's ratios against nginx. The gateway runs
# one event-loop thread, as nginx's one worker does (FRONT_THREADS=N gives it N).
# SYSCALLS=1 also counts each front's system calls per request under strace (wrk -c8 for
# 2 s per case): a count, which this noisy box does not blur as it blurs times.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=benches/load
DUR=${1:-5}
command -v wrk >/dev/null || { echo "wrk is missing: bash scripts/install-deps.sh"; exit 1; }
command -v nginx >/dev/null || { echo "nginx is missing: bash scripts/install-deps.sh"; exit 1; }
if [ -n "${SYSCALLS:-}" ]; then command -v strace >/dev/null || { echo "strace is missing: apt-get install strace"; exit 1; }; fi
cargo build -q --release -p gateway
GATEWAY=$PWD/target/release/gateway
PYBIN=$(python3 -c 'import sys,os;print(os.path.dirname(sys.executable))')
OUT=$(mktemp -d)
trap 'kill -KILL $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
PORT=$((20000 + RANDOM % 10000))
TICKS=$(getconf CLK_TCK)

mkdir -p "$OUT/www"
head -c 4096 /dev/urandom >"$OUT/www/4k.bin"
head -c 1048576 /dev/urandom >"$OUT/www/1m.bin"
"$PYBIN/uwsgi" --socket "$OUT/app.sock" --wsgi-file benches/load/bench_app.py --processes 1 \
  --threads 2 --disable-logging --buffer-size 65535 >"$OUT/uwsgi.log" 2>&1 &
for _ in $(seq 1 100); do [ -S "$OUT/app.sock" ] && break; sleep 0.1; done
cp /etc/nginx/uwsgi_params "$OUT/uwsgi_params" 2>/dev/null || true

site() { # listen
  cat <<EOF
server {
    listen 127.0.0.1:$1;
    root $OUT/www;
    location = /return { return 200 "ok"; }
    location /app { uwsgi_pass unix:$OUT/app.sock; include uwsgi_params; }
}
EOF
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

bench() { # name pid url
  local name=$1 pid=$2 url=$3 res rps p99 before after
  wrk -t1 -c8 -d1s "$url" >/dev/null 2>&1 || true
  before=$(cpu_ticks "$pid")
  res=$(wrk -t1 -c32 -d"${DUR}s" --latency "$url" 2>&1)
  after=$(cpu_ticks "$pid")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$res")
  p99=$(awk '$1=="99%" {print $2}' <<<"$res")
  local reqs
  reqs=$(awk '/requests in/ {print $1}' <<<"$res")
  echo "$name $url ${rps:-0} ${p99:-?} $(( (after - before) * 1000000 / TICKS )) ${reqs:-1}" >>"$OUT/results"
}

syscalls() { # name pid url: system calls per request, counted by strace
  local name=$1 pid=$2 url=$3 n tracer
  strace -c -f -p "$pid" -o "$OUT/strace" 2>/dev/null &
  tracer=$!
  sleep 0.5
  n=$(wrk -t1 -c8 -d2s "$url" 2>&1 | awk '/requests in/ {print $1}')
  kill -INT "$tracer" 2>/dev/null || true
  wait "$tracer" 2>/dev/null || true
  # strace -c columns: % time, seconds, usecs/call, calls, [errors,] syscall.
  awk -v n="${n:-0}" -v who="$name" -v url="$url" '
    $NF == "total" { total = $4 }
    $NF != "total" && $4 ~ /^[0-9]+$/ && $4 > 0 { calls[$NF] = $4 }
    END {
      if (n == 0) { printf "%-8s %-40s no requests\n", who, url; exit }
      line = ""
      for (k = 0; k < 6; k++) { best = ""; for (c in calls) if (best == "" || calls[c] > calls[best]) best = c
        if (best == "") break; line = line sprintf(" %s %.2f", best, calls[best] / n); delete calls[best] }
      printf "%-8s %-40s %6.2f per request:%s\n", who, url, total / n, line
    }' "$OUT/strace"
}

# nginx, one worker.
NPORT=$PORT; GPORT=$((PORT + 1))
mkdir -p "$OUT/nginx"
cat >"$OUT/nginx/nginx.conf" <<EOF
daemon off; master_process off; worker_processes 1; pid $OUT/nginx/nginx.pid;
error_log $OUT/nginx/error.log; events { worker_connections 1024; }
http { access_log off; sendfile on; include /etc/nginx/mime.types;
  client_body_temp_path $OUT/nginx/b; proxy_temp_path $OUT/nginx/p; fastcgi_temp_path $OUT/nginx/f;
  uwsgi_temp_path $OUT/nginx/u; scgi_temp_path $OUT/nginx/s;
$(site $NPORT | sed "s|include uwsgi_params|include $OUT/uwsgi_params|")
}
EOF
nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" -e "$OUT/nginx/error.log" >/dev/null 2>&1 &
NGINX=$!
site $GPORT >"$OUT/site.conf"
(cd "$OUT" && GATEWAY_LOG=warn TOKIO_WORKER_THREADS=${FRONT_THREADS:-1} exec "$GATEWAY" --nginx-conf site.conf --disable-logging) >"$OUT/gateway.log" 2>&1 &
GW=$!
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://127.0.0.1:$NPORT/return" && curl -s -o /dev/null "http://127.0.0.1:$GPORT/return" && break
  sleep 0.1
done

# Rounds alternate which of the two goes first, so neither always runs on a warmer box.
for round in $(seq 1 "${ROUNDS:-1}"); do
  for path in /4k.bin /1m.bin /return /app/hello; do
    if [ $((round % 2)) = 1 ]; then
      bench nginx "$NGINX" "http://127.0.0.1:$NPORT$path"
      bench gateway "$GW" "http://127.0.0.1:$GPORT$path"
    else
      bench gateway "$GW" "http://127.0.0.1:$GPORT$path"
      bench nginx "$NGINX" "http://127.0.0.1:$NPORT$path"
    fi
  done
done

if [ -n "${SYSCALLS:-}" ]; then
  echo "system calls per request (strace -c, wrk -t1 -c8 -d2s):"
  for path in /4k.bin /1m.bin /return /app/hello; do
    syscalls nginx "$NGINX" "http://127.0.0.1:$NPORT$path"
    syscalls gateway "$GW" "http://127.0.0.1:$GPORT$path"
  done
fi

echo
echo "wrk -t1 -c32 -d${DUR}s; nginx: 1 worker; gateway: --nginx-conf, 1 process, ${FRONT_THREADS:-1} thread(s); same uWSGI behind both${ROUNDS:+; medians of $ROUNDS rounds (min-max of the x nginx ratios, round by round)}"
printf '%-12s %-9s %10s %8s %9s %12s %8s %s\n' case front "req/s" "x nginx" "p99" "CPU µs/req" "x nginx" "${ROUNDS:+rounds: req/s x, p99 x}"
awk -f "$HERE/stats.awk" -f /dev/stdin "$OUT/results" <<'AWK'
  { split($2, u, "/"); c="/" u[4]; if (u[5] != "") c=c "/" u[5]
    rps[c,$1]=rps[c,$1] " " $3; p99[c,$1]=p99[c,$1] " " us($4); cpu[c,$1]=cpu[c,$1] " " ($6>0 ? $5/$6 : 0)
    if (!(c in seen)) { seen[c]=1; order[++n]=c } }
  END {
    for (i=1; i<=n; i++) { c=order[i]
      # The gateway against nginx round by round (the lists are in the rounds' order).
      rounds=split(rps[c,"gateway"], gr, " "); split(rps[c,"nginx"], nr, " ")
      split(p99[c,"gateway"], gl, " "); split(p99[c,"nginx"], nl, " ")
      ratios_r=""; ratios_p=""
      for (k=1; k<=rounds; k++) if (nr[k] > 0 && nl[k] > 0) { ratios_r=ratios_r " " gr[k] / nr[k]; ratios_p=ratios_p " " gl[k] / nl[k] }
      b=median(rps[c,"nginx"]); bc=median(cpu[c,"nginx"])
      for (j=1; j<=2; j++) { s=(j==1?"nginx":"gateway")
        r=median(rps[c,s]); cu=median(cpu[c,s])
        extra=(j==2 && rounds > 1 && ratios_r != "" ? range(ratios_r) ", " range(ratios_p) : "")
        printf "%-12s %-9s %10.0f %8s %9s %12.1f %8s %s\n", c, s, r, (b>0?sprintf("%.2f",r/b):"-"), latency(median(p99[c,s])), cu, (bc>0?sprintf("%.2f",cu/bc):"-"), extra
      }
    }
  }
AWK
