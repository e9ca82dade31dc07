//! The master and its workers, driven as users drive uWSGI's: kill -9, max-requests,
//! harakiri, reload-on-rss, SIGHUP under load, SIGTERM with requests in flight, the
//! stats server, no thundering herd, and how evenly connections spread.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use testkit::Peer;

/// Answers `VERSION pid`; /sleep?S sleeps, /leak keeps 30 MB, /crash kills the process,
/// /frozen answers `frozen N` (the objects in the collector's permanent generation).
const APP: &str = r#"
import gc, os, time
VERSION = "v1"
LEAK = []
def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        time.sleep(float(environ["QUERY_STRING"] or 1))
    elif path == "/leak":
        LEAK.append(b"x" * (30 << 20))
    elif path == "/crash":
        os._exit(3)
    body = ("%s %d" % (VERSION, os.getpid())).encode()
    if path == "/frozen":
        body = b"frozen %d" % gc.get_freeze_count()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

fn start(dir: &Path, addr: SocketAddr, args: &[&str]) -> Peer {
    start_program(Path::new(env!("CARGO_BIN_EXE_gateway")), dir, addr, args)
}

fn start_program(program: &Path, dir: &Path, addr: SocketAddr, args: &[&str]) -> Peer {
    std::fs::write(dir.join("app.py"), APP).unwrap();
    let mut cmd = Command::new(program);
    cmd.args(["--http", &addr.to_string(), "--wsgi-file", "app.py"])
        .args(["--worker-reload-mercy", "10"])
        .args(args)
        .current_dir(dir);
    let peer = Peer::spawn("gateway", cmd, Some(&dir.join("gateway.log")));
    peer.wait_log("WSGI app ready", Duration::from_secs(30));
    peer
}

fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], testkit::free_port()))
}

/// One request on its own connection: (status, body), or why it failed.
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    if raw.is_empty() {
        return Err("closed without a response".into());
    }
    let r = testkit::HttpResponse::parse(&raw);
    Ok((r.status, r.text()))
}

fn pid_of(body: &str) -> u32 {
    body.split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {body:?}"))
}

fn stats(addr: SocketAddr) -> serde_json::Value {
    let mut s = TcpStream::connect(addr).expect("stats server");
    let mut doc = String::new();
    s.read_to_string(&mut doc).unwrap();
    serde_json::from_str(&doc).unwrap_or_else(|e| panic!("stats JSON {doc:?}: {e}"))
}

fn worker_pids(stats_addr: SocketAddr) -> Vec<u32> {
    stats(stats_addr)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn workers_forked_after_the_load_find_the_apps_objects_frozen() {
    for lazy in [false, true] {
        let dir = testkit::temp_dir();
        let addr = local();
        let mut args = vec!["--master", "--processes", "2"];
        if lazy {
            args.push("--lazy-apps");
        }
        let gw = start(dir.path(), addr, &args);
        for _ in 0..4 {
            let (status, body) = get(addr, "/frozen").expect("served");
            assert_eq!(status, 200);
            let n: u64 = body
                .strip_prefix("frozen ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{body:?}"));
            // Loaded in the master: what it loaded is frozen before the fork, so the
            // workers' collections skip it. Loaded in each worker: nothing is frozen.
            assert_eq!(n > 1000, !lazy, "lazy apps {lazy}: {n} objects frozen");
        }
        assert_eq!(gw.log().contains("frozen (gc.freeze)"), !lazy);
    }
}

#[test]
fn kill_9_mid_request_then_serving_goes_on() {
    let dir = testkit::temp_dir();
    let (addr, st) = (local(), local());
    let gw = start(dir.path(), addr, &["--master", "--stats", &st.to_string()]);
    let pids = worker_pids(st);
    assert_eq!(pids.len(), 1);
    let slow = std::thread::spawn(move || get(addr, "/sleep?5"));
    std::thread::sleep(Duration::from_millis(500));
    testkit::signal(pids[0], "KILL");
    let r = slow.join().unwrap();
    assert!(
        r.is_err(),
        "the killed request's client gets an error: {r:?}"
    );
    for _ in 0..5 {
        let (status, body) = get(addr, "/").expect("served after the kill");
        assert_eq!(status, 200);
        assert_ne!(pid_of(&body), pids[0], "a new worker");
    }
    let log = gw.log();
    assert!(log.contains("died (killed by SIGKILL)"), "{log}");
}

#[test]
fn a_crashing_app_does_not_make_the_master_spin() {
    let dir = testkit::temp_dir();
    std::fs::write(
        dir.path().join("broken.py"),
        "raise RuntimeError('broken at import')\n",
    )
    .unwrap();
    let addr = local();
    // Without --lazy-apps the master loads the app: a broken import is a start-up error.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args([
        "--http",
        &addr.to_string(),
        "--wsgi-file",
        "broken.py",
        "--processes",
        "2",
    ])
    .current_dir(dir.path());
    let mut gw = Peer::spawn("gateway", cmd, Some(&dir.path().join("master.log")));
    let status = gw.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    assert!(gw.log().contains("broken at import"), "{}", gw.log());

    // With --lazy-apps every worker fails after the fork: respawned with a back-off.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args([
        "--http",
        &addr.to_string(),
        "--wsgi-file",
        "broken.py",
        "--master",
        "--lazy-apps",
    ])
    .current_dir(dir.path());
    let gw = Peer::spawn("gateway", cmd, Some(&dir.path().join("lazy.log")));
    std::thread::sleep(Duration::from_secs(4));
    let log = gw.log();
    let deaths = log.matches("before it was ready").count();
    let delays: Vec<f64> = log
        .lines()
        .filter_map(|l| {
            l.split("respawning in ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        (3..=12).contains(&deaths),
        "{deaths} deaths in 4 s (without a back-off: dozens):\n{log}"
    );
    assert!(
        delays.windows(2).all(|w| w[1] >= w[0]) && delays.last().copied().unwrap_or(0.0) >= 0.4,
        "growing delays: {delays:?}"
    );
    // The master itself stays idle while it waits.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", gw.pid())).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    assert!(ticks < 50, "the master used {ticks} ticks of CPU in 4 s");
    assert!(
        log.contains("broken at import"),
        "the traceback is logged:\n{log}"
    );
}

#[test]
fn max_requests_recycles_workers_without_failing_a_request() {
    let dir = testkit::temp_dir();
    let addr = local();
    let gw = start(
        dir.path(),
        addr,
        &["--processes", "2", "--max-requests", "5"],
    );
    let mut pids = std::collections::HashSet::new();
    for n in 0..40 {
        let (status, body) = get(addr, "/").unwrap_or_else(|e| panic!("request {n}: {e}"));
        assert_eq!(status, 200);
        pids.insert(pid_of(&body));
    }
    assert!(pids.len() >= 4, "workers were recycled: {pids:?}");
    assert!(gw.log().contains("retiring (max-requests)"), "{}", gw.log());
}

fn harakiri(threads: &str) {
    let dir = testkit::temp_dir();
    let addr = local();
    let gw = start(
        dir.path(),
        addr,
        &["--processes", "1", "--threads", threads, "--harakiri", "2"],
    );
    let (_, body) = get(addr, "/").unwrap();
    let first_pid = pid_of(&body);
    let started = Instant::now();
    let stuck = std::thread::spawn(move || (get(addr, "/sleep?30"), started.elapsed()));
    // With threads to spare, other requests complete meanwhile.
    let others = if threads == "1" {
        None
    } else {
        Some(std::thread::spawn(move || {
            (0..6)
                .map(|_| get(addr, "/sleep?0.3").map(|(s, _)| s))
                .collect::<Vec<_>>()
        }))
    };
    let (r, took) = stuck.join().unwrap();
    assert_eq!(r.as_ref().map(|r| r.0), Ok(504), "{r:?}");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "504 after {took:?}"
    );
    if let Some(others) = others {
        assert!(others.join().unwrap().iter().all(|s| *s == Ok(200)));
    }
    gw.wait_log("retired (harakiri", Duration::from_secs(15));
    let log = gw.log();
    assert!(log.contains("HARAKIRI"), "{log}");
    assert!(
        log.contains("Python stack") && log.contains("time.sleep"),
        "the stuck thread's stack is logged:\n{log}"
    );
    let (status, body) = get(addr, "/").unwrap();
    assert_eq!(status, 200);
    assert_ne!(pid_of(&body), first_pid, "the worker was replaced");
}

#[test]
fn harakiri_with_one_thread() {
    harakiri("1");
}

#[test]
fn harakiri_with_four_threads_spares_the_other_requests() {
    harakiri("4");
}

#[test]
fn reload_on_rss_recycles_a_leaking_worker() {
    let dir = testkit::temp_dir();
    let addr = local();
    let gw = start(dir.path(), addr, &["--master", "--reload-on-rss", "100"]);
    let (_, body) = get(addr, "/").unwrap();
    let first = pid_of(&body);
    for _ in 0..4 {
        assert_eq!(get(addr, "/leak").unwrap().0, 200);
    }
    // Retired: the old worker has finished and exited (until then it may still take one).
    gw.wait_log("retired (reload-on-rss", Duration::from_secs(20));
    let (status, body) = get(addr, "/").unwrap();
    assert_eq!(status, 200);
    assert_ne!(pid_of(&body), first);
}

/// A client loop on `clients` threads (a new connection per request) until `stop` is set
/// and the last answer starts with `until` (or 60 s more have passed: bounded); returns
/// (requests, failures, and last the last answer).
fn load(
    addr: SocketAddr,
    clients: usize,
    stop: &Arc<AtomicBool>,
    until: &'static str,
) -> Vec<std::thread::JoinHandle<(usize, Vec<String>)>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut n, mut failures) = (0, Vec::new());
                let mut last = String::new();
                let mut stopped: Option<Instant> = None;
                loop {
                    if stop.load(Ordering::Relaxed) {
                        let since = *stopped.get_or_insert_with(Instant::now);
                        if last.starts_with(until) || since.elapsed() > Duration::from_secs(60) {
                            break;
                        }
                    }
                    match get(addr, "/") {
                        Ok((200, body)) => last = body,
                        other => failures.push(format!("{other:?}")),
                    }
                    n += 1;
                }
                failures.push(format!("last={last}"));
                (n, failures)
            })
        })
        .collect()
}

fn reload_under_load(lazy: bool) {
    let dir = testkit::temp_dir();
    let addr = local();
    let mut args = vec!["--processes", "2", "--threads", "2"];
    if lazy {
        args.push("--lazy-apps");
    }
    let gw = start(dir.path(), addr, &args);
    let stop = Arc::new(AtomicBool::new(false));
    // The clients go on after the second reload until the new code answers them (old
    // workers serve until the new ones are ready, which a loaded box may delay past any
    // fixed wait); the old generation has to go within 60 s.
    let mut clients = load(addr, 1, &stop, "v2");
    clients.extend(load(addr, 16, &stop, "v2"));
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(dir.path().join("app.py"), APP.replace("\"v1\"", "\"v2\"")).unwrap();
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(1500));
    gw.signal("HUP");
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (n, mut failures) = c.join().unwrap();
        let last = failures.pop().unwrap();
        assert!(
            failures.is_empty(),
            "failed requests during reloads: {failures:?}"
        );
        assert!(last.starts_with("last=v2"), "the new code serves: {last}");
        total += n;
    }
    assert!(total > 50, "only {total} requests");
    // No worker of the old code is left: soon every request gets the new one. (An old
    // worker that has just been told to retire may still take a request or two, after a
    // client has seen the new code: hence the deadline.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let old = (0..20)
            .map(|_| get(addr, "/").unwrap())
            .inspect(|(status, _)| assert_eq!(*status, 200))
            .find(|(_, body)| !body.starts_with("v2"));
        let Some((_, body)) = old else { break };
        assert!(
            Instant::now() < deadline,
            "an old worker still serves: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = gw.log();
    assert_eq!(log.matches("SIGHUP: graceful reload").count(), 2, "{log}");
    assert!(log.contains("retired (reload"), "{log}");
}

#[test]
fn sighup_reloads_new_code_under_load_without_a_failed_request() {
    reload_under_load(false);
}

#[test]
fn sighup_with_lazy_apps_reloads_without_a_failed_request() {
    reload_under_load(true);
}

#[test]
fn sigterm_lets_requests_in_flight_finish_and_vacuums() {
    let dir = testkit::temp_dir();
    let addr = local();
    let sock = dir.path().join("app.sock");
    let pidfile = dir.path().join("gw.pid");
    let mut gw = start(
        dir.path(),
        addr,
        &[
            "--processes",
            "2",
            "--threads",
            "2",
            "--socket",
            sock.to_str().unwrap(),
            "--pidfile",
            pidfile.to_str().unwrap(),
            "--vacuum",
        ],
    );
    assert!(sock.exists() && pidfile.exists());
    let slow: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || get(addr, "/sleep?1.5")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    gw.signal("TERM");
    for s in slow {
        assert_eq!(s.join().unwrap().map(|r| r.0), Ok(200), "finished, not cut");
    }
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("the master exits");
    assert!(status.success(), "{status}");
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert!(!sock.exists() && !pidfile.exists(), "--vacuum removed them");
    assert!(
        TcpStream::connect(addr).is_err(),
        "nothing listens any more"
    );
}

/// The voluntary context switches of each worker's accept thread.
fn acceptor_wakeups(pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .map(|pid| {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
            tasks
                .filter_map(|t| {
                    let t = t.ok()?.path();
                    let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                    (comm.trim() == "accept-0").then_some(())?;
                    let status = std::fs::read_to_string(t.join("status")).ok()?;
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                        .trim()
                        .parse()
                        .ok()
                })
                .next()
                .unwrap_or_else(|| panic!("no accept thread in worker {pid}"))
        })
        .collect()
}

#[test]
fn an_idle_request_wakes_one_worker_and_stats_show_it() {
    let dir = testkit::temp_dir();
    let (addr, st) = (local(), local());
    let _gw = start(
        dir.path(),
        addr,
        &["--processes", "4", "--stats", &st.to_string()],
    );
    let pids = worker_pids(st);
    assert_eq!(pids.len(), 4);
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..3 {
        let before = acceptor_wakeups(&pids);
        assert_eq!(get(addr, "/").unwrap().0, 200);
        std::thread::sleep(Duration::from_millis(100));
        let after = acceptor_wakeups(&pids);
        let woken = before.iter().zip(&after).filter(|(b, a)| a > b).count();
        assert_eq!(woken, 1, "round {round}: {before:?} -> {after:?}");
    }
    std::thread::sleep(Duration::from_millis(300)); // the workers report every 100 ms
    let doc = stats(st);
    let workers = doc["workers"].as_array().unwrap();
    let served: u64 = workers
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 3, "{doc}");
    assert!(
        workers
            .iter()
            .all(|w| w["status"] == "idle" && w["rss"].as_u64().unwrap() > 0)
    );
}

/// The cores a task may run on, from `Cpus_allowed_list` (such as `0-2,5`).
fn cpus_allowed(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    list.split(',')
        .flat_map(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()
        })
        .collect()
}

/// The cores this test may run on (and so a gateway it starts).
fn my_cpus() -> Vec<usize> {
    cpus_allowed(&std::fs::read_to_string("/proc/self/status").unwrap())
}

/// `(worker id, the cores each of its threads may run on)` for every worker.
fn worker_cores(st: SocketAddr) -> Vec<(u64, Vec<Vec<usize>>)> {
    stats(st)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let pid = w["pid"].as_u64().unwrap();
            let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .map(|t| {
                    let status = std::fs::read_to_string(t.unwrap().path().join("status"));
                    cpus_allowed(&status.unwrap())
                })
                .collect();
            (w["id"].as_u64().unwrap(), threads)
        })
        .collect()
}

/// `(name, scheduling policy)` of every thread of `pid` (policy 0 is SCHED_OTHER, 3
/// SCHED_BATCH: field 41 of `/proc/PID/task/TID/stat`).
fn thread_policies(pid: u64) -> Vec<(String, u32)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| {
            let t = t.unwrap().path();
            let name = std::fs::read_to_string(t.join("comm")).ok()?;
            let stat = std::fs::read_to_string(t.join("stat")).ok()?;
            // The fields after the name (which may hold spaces) start at field 3.
            let after = &stat[stat.rfind(')')? + 2..];
            let policy = after.split(' ').nth(41 - 3)?.parse().ok()?;
            Some((name.trim().to_owned(), policy))
        })
        .collect()
}

/// Asks for pages until every worker's event loop runs under SCHED_BATCH (it is set the
/// first time the loop wakes), for at most 10 s; the policies seen last, per worker.
fn until_batched(addr: SocketAddr, st: SocketAddr) -> Vec<Vec<(String, u32)>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(get(addr, "/").unwrap().0, 200);
        let seen: Vec<_> = stats(st)["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| thread_policies(w["pid"].as_u64().unwrap()))
            .collect();
        let all = seen
            .iter()
            .all(|t| t.iter().any(|(n, p)| n == "tokio-rt-worker" && *p == 3));
        if all || Instant::now() > deadline {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cpu_affinity_binds_every_thread_of_each_worker_to_cores_in_turn() {
    let mine = my_cpus();
    let dir = testkit::temp_dir();
    let (addr, st) = (local(), local());
    let gw = start(
        dir.path(),
        addr,
        &[
            "--processes",
            "3",
            "--threads",
            "2",
            "--cpu-affinity",
            "1",
            "--stats",
            &st.to_string(),
        ],
    );
    assert_eq!(get(addr, "/").unwrap().0, 200);
    let workers = worker_cores(st);
    assert_eq!(workers.len(), 3);
    for (id, threads) in &workers {
        let want = vec![mine[(*id as usize - 1) % mine.len()]];
        // The runtime's, Python's, the accept and report threads: all started after
        // the binding.
        assert!(threads.len() >= 4, "worker {id}: {threads:?}");
        assert!(
            threads.iter().all(|t| *t == want),
            "worker {id}: {threads:?}, want {want:?}"
        );
    }
    assert!(
        gw.log().contains("worker 3 bound to cpu(s)"),
        "{}",
        gw.log()
    );
    // One core for the event loop and Python: the loop yields it to Python (SCHED_BATCH),
    // Python's threads keep the default policy.
    for threads in until_batched(addr, st) {
        assert!(
            threads
                .iter()
                .any(|(n, p)| n == "tokio-rt-worker" && *p == 3),
            "{threads:?}"
        );
        let python: Vec<_> = threads
            .iter()
            .filter(|(n, _)| n.starts_with("wsgi-"))
            .collect();
        assert_eq!(python.len(), 2, "{threads:?}");
        assert!(python.iter().all(|(_, p)| *p == 0), "{threads:?}");
    }
    drop(gw);

    // `--cpu-affinity 0`: every worker may run on every core of ours.
    let (addr, st) = (local(), local());
    let _gw = start(
        dir.path(),
        addr,
        &[
            "--processes",
            "2",
            "--cpu-affinity",
            "0",
            "--stats",
            &st.to_string(),
        ],
    );
    for (id, threads) in worker_cores(st) {
        assert!(
            threads.iter().all(|t| *t == mine),
            "worker {id}: {threads:?}"
        );
    }
    // Not bound: every thread keeps the default policy.
    for _ in 0..20 {
        assert_eq!(get(addr, "/").unwrap().0, 200);
    }
    for w in stats(st)["workers"].as_array().unwrap() {
        let threads = thread_policies(w["pid"].as_u64().unwrap());
        assert!(threads.iter().all(|(_, p)| *p == 0), "{threads:?}");
    }
}

#[test]
fn by_default_workers_short_of_two_cores_each_are_bound_one_core_each() {
    let mine = my_cpus();
    let usable = std::thread::available_parallelism().map_or(1, usize::from);
    // As many workers as cores (at least 2): each cannot have two.
    let n = mine.len().max(2);
    let dir = testkit::temp_dir();
    let (addr, st) = (local(), local());
    let _gw = start(
        dir.path(),
        addr,
        &["--processes", &n.to_string(), "--stats", &st.to_string()],
    );
    let workers = worker_cores(st);
    assert_eq!(workers.len(), n);
    for (id, threads) in workers {
        let want = if usable < mine.len() {
            mine.clone() // a CPU quota below the CPU set: not bound
        } else {
            vec![mine[(id as usize - 1) % mine.len()]]
        };
        assert!(
            threads.iter().all(|t| *t == want),
            "worker {id}: {threads:?}, want {want:?}"
        );
    }
}

#[test]
fn keep_alive_connections_spread_across_workers() {
    let dir = testkit::temp_dir();
    let addr = local();
    let _gw = start(dir.path(), addr, &["--processes", "2", "--threads", "2"]);
    std::thread::sleep(Duration::from_millis(300));
    let mut conns: Vec<TcpStream> = (0..32).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut count = std::collections::HashMap::<u32, usize>::new();
    for c in &mut conns {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 1024];
        while !raw.windows(4).any(|w| w == b"\r\n\r\n")
            || testkit::HttpResponse::parse(&raw).body.len()
                < testkit::HttpResponse::parse(&raw)
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(usize::MAX)
        {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early");
            raw.extend_from_slice(&buf[..n]);
        }
        *count
            .entry(pid_of(&testkit::HttpResponse::parse(&raw).text()))
            .or_default() += 1;
    }
    eprintln!("connections per worker: {count:?}");
    assert_eq!(count.len(), 2, "{count:?}");
    // A worker with a connection more than the other waits before it accepts again.
    assert!(count.values().all(|&n| n == 16), "uneven: {count:?}");
}

#[test]
fn daemonize_detaches_and_logs_to_the_file() {
    let dir = testkit::temp_dir();
    std::fs::write(dir.path().join("app.py"), APP).unwrap();
    let addr = local();
    let (log, pidfile) = (dir.path().join("daemon.log"), dir.path().join("gw.pid"));
    let status = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--http",
            &addr.to_string(),
            "--wsgi-file",
            "app.py",
            "--master",
        ])
        .args([
            "--daemonize",
            log.to_str().unwrap(),
            "--pidfile",
            pidfile.to_str().unwrap(),
        ])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "the command returns at once");
    let start = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("WSGI app ready")
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no start in the log"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let served = get(addr, "/");
    testkit::signal(pid, "TERM");
    assert_eq!(served.map(|r| r.0), Ok(200));
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon stops on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("GET / => generated ") && text.contains("master stopped"),
        "{text}"
    );
}

#[test]
fn py_autoreload_picks_up_a_changed_module() {
    let dir = testkit::temp_dir();
    let addr = local();
    let gw = start(dir.path(), addr, &["--py-autoreload", "1"]);
    assert!(get(addr, "/").unwrap().1.starts_with("v1"));
    std::thread::sleep(Duration::from_millis(1100)); // a different mtime
    std::fs::write(dir.path().join("app.py"), APP.replace("\"v1\"", "\"v2\"")).unwrap();
    wait_version(&gw, addr, "v2");
    assert!(
        gw.log().contains("app.py changed, reloading"),
        "{}",
        gw.log()
    );
}

/// Waits until `/` answers with `version`, every answer on the way a 200.
fn wait_version(gw: &Peer, addr: SocketAddr, version: &str) {
    let start = Instant::now();
    loop {
        let (status, body) = get(addr, "/").expect("served throughout");
        assert_eq!(status, 200);
        if body.starts_with(version) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{version} never served:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Puts the gateway binary at `to` (a hard link where the file system allows it).
fn place_binary(to: &Path) {
    let from = Path::new(env!("CARGO_BIN_EXE_gateway"));
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).unwrap();
    }
}

#[test]
fn sighup_runs_the_replaced_binary_and_survives_a_deleted_one() {
    let dir = testkit::temp_dir();
    let program = dir.path().join("gw");
    place_binary(&program);
    let addr = local();
    let gw = start_program(&program, dir.path(), addr, &["--master"]);
    wait_version(&gw, addr, "v1");

    // An upgrade puts a new file at the path (a build or a package manager renames
    // over it): the reload executes that file.
    place_binary(&dir.path().join("gw.new"));
    std::fs::rename(dir.path().join("gw.new"), &program).unwrap();
    std::fs::write(dir.path().join("app.py"), APP.replace("\"v1\"", "\"v2\"")).unwrap();
    gw.signal("HUP");
    wait_version(&gw, addr, "v2");
    let exe = std::fs::read_link(format!("/proc/{}/exe", gw.pid())).unwrap();
    assert_eq!(exe, program, "the master runs the file now at the path");

    // Nothing at the path any more: the reload runs the master's own image again.
    std::fs::remove_file(&program).unwrap();
    std::fs::write(dir.path().join("app.py"), APP.replace("\"v1\"", "\"v3\"")).unwrap();
    gw.signal("HUP");
    wait_version(&gw, addr, "v3");
    let log = gw.log();
    assert_eq!(log.matches("SIGHUP: graceful reload").count(), 2, "{log}");
    assert!(!log.contains("reload failed"), "{log}");
}

#[test]
fn uid_and_gid_are_dropped_after_binding() {
    if !nix_is_root() {
        eprintln!("skipped: dropping privileges needs root");
        return;
    }
    let dir = testkit::temp_dir();
    let addr = local();
    std::fs::write(
        dir.path().join("who.py"),
        "import os\ndef application(e, sr):\n    sr('200 OK', [])\n    return [('%d %d' % (os.getuid(), os.getgid())).encode()]\n",
    )
    .unwrap();
    // The temp dir must be readable by nobody.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for master in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.args(["--http", &addr.to_string(), "--wsgi-file", "who.py"])
            .args(["--uid", "nobody", "--gid", "nogroup"])
            .current_dir(dir.path());
        if master {
            cmd.arg("--master");
        }
        let mut gw = Peer::spawn("gateway", cmd, Some(&dir.path().join("gw.log")));
        gw.wait_tcp(addr, Duration::from_secs(20));
        gw.wait_log("WSGI app ready", Duration::from_secs(20));
        let (status, body) = get(addr, "/").unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "65534 65534"),
            "master={master}"
        );
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

/// Processes whose command line holds `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
        })
        .collect()
}

/// The master killed with SIGKILL while workers are being recycled (one request each):
/// no worker outlives it, not even one forked a moment before.
#[test]
fn no_worker_outlives_a_killed_master() {
    for round in 0..3 {
        let dir = testkit::temp_dir();
        let addr = local();
        let mut gw = start(
            dir.path(),
            addr,
            &["--processes", "2", "--max-requests", "1"],
        );
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = get(addr, "/");
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300 + 100 * round));
        gw.signal("KILL");
        gw.wait_exit(Duration::from_secs(5));
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap();
        let needle = format!("--http {addr} ");
        let started = Instant::now();
        while !processes_with(&needle).is_empty() && started.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let left = processes_with(&needle);
        for pid in &left {
            testkit::signal(*pid, "KILL");
        }
        assert!(
            left.is_empty(),
            "round {round}: workers left behind: {left:?}"
        );
    }
}

/// A second server on an address the first listens on fails at start, naming the
/// address, and leaves the first one serving everything (uWSGI's and nginx's "Address
/// already in use"; a port shared by SO_REUSEPORT would split the traffic silently).
#[test]
fn a_second_gateway_on_a_taken_address_fails_and_the_first_keeps_serving() {
    let dir = testkit::temp_dir();
    let addr = local();
    let sock = dir.path().join("app.sock");
    let sock_arg = sock.display().to_string();
    let first = start(
        dir.path(),
        addr,
        &["--processes", "2", "--socket", &sock_arg],
    );
    let (_, body) = get(addr, "/").unwrap();
    let master = first.pid();
    let workers = worker_pids_of(master);
    assert!(workers.contains(&pid_of(&body)), "{body} vs {workers:?}");

    let addr_arg = addr.to_string();
    let cases: [(&str, Vec<&str>); 4] = [
        ("tcp, master", vec!["--http", &addr_arg, "--processes", "2"]),
        ("tcp, one process", vec!["--http", &addr_arg]),
        (
            "unix, master",
            vec!["--socket", &sock_arg, "--processes", "2"],
        ),
        ("unix, one process", vec!["--socket", &sock_arg]),
    ];
    for (case, args) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.args(&args)
            .args(["--wsgi-file", "app.py"])
            .current_dir(dir.path());
        let log = dir.path().join("second.log");
        let mut second = Peer::spawn("second gateway", cmd, Some(&log));
        let status = second.wait_exit(Duration::from_secs(20));
        let said = second.log();
        assert!(
            status.is_some_and(|s| !s.success()),
            "{case}: the second gateway started ({status:?}): {said}"
        );
        assert!(
            said.contains("in use") && said.contains("binding"),
            "{case}: {said}"
        );
        // Everything still reaches the first one's workers.
        for _ in 0..20 {
            let (status, body) = get(addr, "/").unwrap();
            assert_eq!(status, 200, "{case}");
            assert!(
                workers.contains(&pid_of(&body)),
                "{case}: {body} vs {workers:?}"
            );
        }
        assert!(sock.exists(), "{case}: the first one's socket file is gone");
        let pid = uwsgi_get_pid(&sock).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert!(workers.contains(&pid), "{case}: {pid} vs {workers:?}");
    }
    // Killed, the first one leaves its socket file behind: stale (once its workers, who
    // die with their master, are gone too), so it is replaced.
    drop(first);
    let started = Instant::now();
    // (A zombie holds no sockets: gone enough.)
    let alive = |w: &u32| {
        std::fs::read_to_string(format!("/proc/{w}/stat")).is_ok_and(|st| {
            st.rsplit(')')
                .next()
                .is_some_and(|r| !r.trim_start().starts_with('Z'))
        })
    };
    while workers.iter().any(alive) && started.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sock.exists());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--socket", &sock_arg, "--wsgi-file", "app.py"])
        .current_dir(dir.path());
    let third = Peer::spawn("third gateway", cmd, Some(&dir.path().join("third.log")));
    third.wait_log("WSGI app ready", Duration::from_secs(30));
    assert_eq!(uwsgi_get_pid(&sock), Ok(third.pid()), "{}", third.log());
}

/// GET / over the uwsgi protocol on unix socket `sock`: the PID the app answers with.
fn uwsgi_get_pid(sock: &Path) -> Result<u32, String> {
    let mut s = std::os::unix::net::UnixStream::connect(sock).map_err(|e| format!("{e}"))?;
    let mut packet = Vec::new();
    uwsgi_proto::encode_packet(
        uwsgi_proto::Modifier1::WSGI,
        uwsgi_proto::Modifier2::ZERO,
        &[("REQUEST_METHOD", "GET"), ("PATH_INFO", "/")],
        65535,
        &mut packet,
    )
    .unwrap();
    s.write_all(&packet).map_err(|e| format!("{e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("{e}"))?;
    let text = String::from_utf8_lossy(&raw);
    if !(text.starts_with("HTTP/1.") && text.contains(" 200 ")) {
        return Err(format!("not a 200: {text}"));
    }
    text.rsplit(' ')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| format!("no pid in {text}"))
}

/// The worker PIDs of master `master` (its children).
fn worker_pids_of(master: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
