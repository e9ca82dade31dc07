#!/usr/bin/env bash
# Writes gateway/link-order.txt: the functions of the release `gateway` binary that its
# common jobs run, in the order they should sit in the binary. gateway/build.rs hands the
# file to the linker (lld's --symbol-ordering-file), which lays those functions out
# together at the start of the code: a process then maps about 1.5 MB of the binary's
# code instead of the 3.5-4 MB that the same functions scattered over 6 MB make resident
# (the kernel maps a file's pages 64 KiB around each page a process touches).
#
#   bash scripts/link-order.sh        # needs valgrind, wrk and curl
#   KEEP=DIR bash scripts/link-order.sh   # also keeps callgrind's profiles in DIR
#
# Run it after large changes (new hot paths), a toolchain update, or any change to the
# dependencies or their features: that changes the gateway crate's metadata and so the
# hashes in the names of the generic functions it instantiates (turning on one feature of
# libmimalloc-sys renamed 448 of 1,278). A stale file only leaves the functions it no
# longer names in the linker's own order. To check it against a build:
#   cargo build --release -p gateway
#   comm -23 <(sort -u gateway/link-order.txt) \
#     <(nm --defined-only target/release/gateway | awk '{print $3}' | sort -u) | wc -l
# The jobs, each under callgrind on loopback and unix sockets in a temp dir:
# --http-socket with hello world, a 64 KiB POST echo, a 1 MiB stream, chunked and HEAD
# requests, started from an ini file; a master with two workers serving the Django test
# site; a front (--nginx-conf) with a static file, `return` and uwsgi_pass to a worker on
# --socket.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)"; exit 1; }
cargo build -q --release -p gateway
GW=$PWD/target/release/gateway
OUT=$(mktemp -d)
trap 'kill -KILL $(jobs -p) 2>/dev/null || true; rm -rf "$OUT"' EXIT
PORT=$((30000 + RANDOM % 5000))
cg() { # job: callgrind's command line, one output file per process of the job
  echo valgrind -q --tool=callgrind --demangle=no "--callgrind-out-file=$OUT/cg-$1.%p"
}

up() { # url
  for _ in $(seq 1 300); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done
  echo "no answer at $1"; exit 1
}
stop() { # pid...
  kill -INT "$@" 2>/dev/null || true
  for p in "$@"; do while kill -0 "$p" 2>/dev/null; do sleep 0.2; done; done
}

# 1. An app server started from an ini file, over HTTP.
cat >"$OUT/app.ini" <<EOF
[uwsgi]
http-socket = 127.0.0.1:$PORT
chdir = $PWD/benches/load
module = bench_app
threads = 2
disable-logging = true
EOF
$(cg app) "$GW" --ini "$OUT/app.ini" >"$OUT/app.log" 2>&1 &
APP=$!
up "http://127.0.0.1:$PORT/hello"
wrk -t1 -c8 -d3s "http://127.0.0.1:$PORT/hello" >/dev/null
wrk -t1 -c8 -d3s -s benches/load/post64k.lua "http://127.0.0.1:$PORT/echo" >/dev/null
wrk -t1 -c8 -d3s "http://127.0.0.1:$PORT/stream" >/dev/null
curl -s -o /dev/null -I "http://127.0.0.1:$PORT/hello"
head -c 100000 /dev/zero | curl -s -o /dev/null -H 'Transfer-Encoding: chunked' --data-binary @- "http://127.0.0.1:$PORT/echo"
stop $APP

# 2. A master with two workers serving Django.
DJ=$PWD/wsgi-host/tests/apps/djsite
(cd "$DJ" && exec $(cg app) "$GW" --http-socket "127.0.0.1:$((PORT + 1))" --module mysite.wsgi \
  --master --processes 2 --threads 2 --disable-logging) >"$OUT/dj.log" 2>&1 &
DJP=$!
up "http://127.0.0.1:$((PORT + 1))/"
wrk -t1 -c8 -d4s "http://127.0.0.1:$((PORT + 1))/" >/dev/null
wrk -t1 -c8 -d4s "http://127.0.0.1:$((PORT + 1))/items/" >/dev/null
stop $DJP

# 3. A front: static files, return, uwsgi_pass to a worker on a unix socket.
mkdir -p "$OUT/www"
head -c 4096 /dev/urandom >"$OUT/www/4k.bin"
head -c 1048576 /dev/urandom >"$OUT/www/1m.bin"
(cd benches/load && exec $(cg app) "$GW" --socket "$OUT/app.sock" --module bench_app --threads 2 \
  --disable-logging) >"$OUT/back.log" 2>&1 &
BACK=$!
cat >"$OUT/site.conf" <<EOF
server {
    listen 127.0.0.1:$((PORT + 2));
    root $OUT/www;
    location = /return { return 200 "ok"; }
    location /app { uwsgi_pass unix:$OUT/app.sock; include uwsgi_params; }
}
EOF
(cd "$OUT" && exec $(cg front) "$GW" --nginx-conf site.conf --disable-logging) >"$OUT/front.log" 2>&1 &
FRONT=$!
up "http://127.0.0.1:$((PORT + 2))/return"
up "http://127.0.0.1:$((PORT + 2))/app/hello"
for path in /return /4k.bin /1m.bin /app/hello; do
  wrk -t1 -c8 -d3s "http://127.0.0.1:$((PORT + 2))$path" >/dev/null
done
stop $FRONT $BACK

[ -n "${KEEP:-}" ] && cp "$OUT"/cg-* "$KEEP"/
nm -S "$GW" >"$OUT/nm.txt"
python3 - "$GW" "$OUT/nm.txt" "$OUT"/cg-app.* -- "$OUT"/cg-front.* >gateway/link-order.txt <<'PY'
# The order: first the functions the app-server jobs ran, then those only the front ran.
# Within each part, functions that call each other often sit together: lld's own
# call-graph layout (C3, "Optimizing function placement for large-scale data-center
# applications", as lld's --call-graph-ordering-file does it, which cannot be combined
# with a symbol list) over the call counts callgrind saw; then the functions run but
# never seen called from the binary (entry points, callbacks), busiest first.
import re, sys
binary, nm_file, args = sys.argv[1], sys.argv[2], sys.argv[3:]
cut = args.index("--")
jobs = [("app", f) for f in args[:cut]] + [("front", f) for f in args[cut + 1:]]
size = {}
for line in open(nm_file):
    p = line.split()
    if len(p) == 4 and p[2] in "tT":
        size[p[3]] = int(p[1], 16)
cost, edges, app = {}, {}, set()
for job, path in jobs:
    obs, fns, ob, fn, cfn, call = {}, {}, None, None, None, False
    for line in open(path, errors="replace"):
        key, eq, rest = line.rstrip("\n").partition("=")
        if key in ("ob", "cob", "fn", "cfn") and eq:
            m = re.match(r"\((\d+)\)(?: (.*))?$", rest)
            table = obs if key.endswith("ob") else fns
            name = rest
            if m:
                if m.group(2) is not None:
                    table[m.group(1)] = m.group(2)
                name = table.get(m.group(1))
            if key == "ob":
                ob = name
            elif key == "fn":
                fn = name if ob == binary else None
            elif key == "cfn":
                cfn = name  # in the binary if its name is (c3 keeps only those)
        elif key == "calls" and eq:
            call = True  # the next cost line is the call's inclusive cost
            if fn and cfn and fn != cfn:
                n = int(rest.split()[0])
                edges[(fn, cfn)] = edges.get((fn, cfn), 0) + n
        elif line[:1] in "0123456789+-*":
            parts = line.split()
            if fn and not call and len(parts) >= 2 and parts[1].isdigit():
                cost[fn] = cost.get(fn, 0) + int(parts[1])
            call = False
    if job == "app":
        app.update(cost)


def c3(names):
    """lld's CallGraphSort over the edges between `names`."""
    index = {n: i for i, n in enumerate(names)}
    weight = [0] * len(names)
    best = [(-1, 0)] * len(names)
    for (a, b), w in edges.items():
        if a in index and b in index:
            weight[index[b]] += w
            if best[index[b]][0] == -1 or best[index[b]][1] < w:
                best[index[b]] = (index[a], w)
    initial = list(weight)
    sizes = [max(size.get(n, 1), 1) for n in names]
    nxt = list(range(len(names)))
    prv = list(range(len(names)))
    leader = list(range(len(names)))

    def find(i):
        while leader[i] != i:
            leader[i] = leader[leader[i]]
            i = leader[i]
        return i

    def density(i):
        return weight[i] / sizes[i]

    for i in sorted(range(len(names)), key=lambda i: -density(i)):
        pred, w = best[i]
        if pred == -1 or w * 10 <= initial[i]:
            continue
        p = find(pred)
        if p == i or sizes[i] + sizes[p] > 1 << 20:
            continue
        if (weight[p] + weight[i]) / (sizes[p] + sizes[i]) < density(p) / 8:
            continue
        leader[i] = p
        tail_p, tail_i = prv[p], prv[i]  # append cluster i after cluster p
        nxt[tail_p], prv[i] = i, tail_p
        nxt[tail_i], prv[p] = p, tail_i
        sizes[p] += sizes[i]
        weight[p] += weight[i]
        sizes[i] = weight[i] = 0
    order = []
    for lead in sorted((i for i in range(len(names)) if sizes[i] and weight[i]),
                       key=lambda i: -density(i)):
        i = lead
        while True:
            order.append(names[i])
            i = nxt[i]
            if i == lead:
                break
    placed = set(order)
    return order + sorted((n for n in names if n not in placed), key=lambda n: -cost[n])


ran = [n for n in cost if n in size]
out = c3([n for n in ran if n in app]) + c3([n for n in ran if n not in app])
print("\n".join(out))
PY
echo "gateway/link-order.txt: $(wc -l <gateway/link-order.txt) functions"
