//! Upstream pools: nginx's `upstream` groups, with its balancing policies, passive
//! health checks, Tengine's active `check`, and `resolve` servers that follow DNS.
//!
//! ```
//! use gateway::upstream::{Policy, ServerSpec, Upstream};
//! let pool = Upstream::new(
//!     "django",
//!     vec![ServerSpec::parse("127.0.0.1:8001 weight=3").unwrap(), ServerSpec::parse("127.0.0.1:8002").unwrap()],
//!     Policy::RoundRobin,
//! );
//! let mut counts = [0; 2];
//! for _ in 0..8 {
//!     let pick = pool.pick(&Default::default(), &[]).unwrap();
//!     counts[pick.index] += 1;
//! }
//! assert_eq!(counts, [6, 2]); // smooth weighted round robin, as nginx's
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::listen::{AddrError, ListenAddr};

/// One `server` line of an `upstream` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Where the server listens.
    pub addr: ListenAddr,
    /// The address as written (a host name is resolved again by [`Upstream::resolve`]).
    pub name: String,
    /// `weight=N` (default 1).
    pub weight: u32,
    /// `max_fails=N` (default 1; 0 never marks the server down).
    pub max_fails: u32,
    /// `fail_timeout=T` (default 10 s): the window for counting failures, and how long a
    /// failed server is skipped.
    pub fail_timeout: Duration,
    /// `backup`: used only when every other server is unavailable.
    pub backup: bool,
    /// `down`: never used.
    pub down: bool,
    /// `resolve`: the host name is looked up with the group's [`Resolver`] again and
    /// again, and the server follows its addresses (all of them, in turn).
    pub resolve: Option<(String, u16)>,
}

/// A `server` line that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ServerSpecError {
    /// No address.
    #[error("upstream server line has no address")]
    Empty,
    /// The address cannot be parsed.
    #[error(transparent)]
    Addr(#[from] AddrError),
    /// A parameter nginx does not have, or a bad value.
    #[error("bad upstream server parameter {0:?}")]
    Param(String),
}

/// Parses nginx's time values: `10`, `10s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(v: &str) -> Option<Duration> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86400),
        _ => return None,
    })
}

impl ServerSpec {
    /// A server at `addr` with nginx's defaults.
    pub fn new(addr: ListenAddr) -> Self {
        Self {
            name: addr.to_string(),
            addr,
            weight: 1,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            backup: false,
            down: false,
            resolve: None,
        }
    }

    /// Parses what follows `server` in an `upstream` block:
    /// `ADDR [weight=N] [max_fails=N] [fail_timeout=T] [backup] [down] [resolve]`. ADDR
    /// is `host:port`, `unix:/path` or `/path`.
    pub fn parse(line: &str) -> Result<Self, ServerSpecError> {
        let mut words = line.split_whitespace();
        let addr = words.next().ok_or(ServerSpecError::Empty)?;
        let resolve = line.split_whitespace().any(|w| w == "resolve");
        let mut spec = if resolve {
            // Looked up later, with the group's resolver.
            let (host, port) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
                .ok_or_else(|| ServerSpecError::Addr(AddrError(addr.to_owned())))?;
            let mut spec = Self::new(ListenAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], port))));
            spec.resolve = Some((host.to_owned(), port));
            spec
        } else {
            Self::new(ListenAddr::parse(addr)?)
        };
        spec.name = addr.to_owned();
        for w in words {
            let bad = || ServerSpecError::Param(w.to_owned());
            match w.split_once('=') {
                Some(("weight", v)) => {
                    spec.weight = v.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?;
                }
                Some(("max_fails", v)) => spec.max_fails = v.parse().map_err(|_| bad())?,
                Some(("fail_timeout", v)) => {
                    spec.fail_timeout = parse_duration(v).ok_or_else(bad)?;
                }
                None if w == "backup" => spec.backup = true,
                None if w == "down" => spec.down = true,
                None if w == "resolve" => {}
                _ => return Err(bad()),
            }
        }
        Ok(spec)
    }
}

/// How a pool chooses a server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Policy {
    /// Smooth weighted round robin (nginx's default).
    #[default]
    RoundRobin,
    /// `least_conn`: the fewest active requests relative to weight, round robin among
    /// equals.
    LeastConn,
    /// `ip_hash`: the client's address picks the server (the first three octets of IPv4,
    /// as nginx).
    IpHash,
    /// `hash KEY [consistent]`: the request's key picks the server; `consistent` uses a
    /// ketama ring, so adding or removing a server moves about 1/n of the keys.
    Hash {
        /// The key, with nginx variables (`$request_uri`, `$remote_addr`, ...); the caller
        /// expands it into [`PickContext::key`].
        key: String,
        /// Ketama-style consistent hashing.
        consistent: bool,
    },
    /// Tengine's `session_sticky`: a cookie names the server a user's session stays on
    /// while it is healthy; requests without it are balanced round robin.
    Sticky {
        /// The cookie's name (Tengine's default `route`).
        cookie: String,
    },
}

/// What a request offers the policy.
#[derive(Debug, Clone, Default)]
pub struct PickContext<'a> {
    /// The client's address (`ip_hash`).
    pub client: Option<IpAddr>,
    /// The expanded `hash` key.
    pub key: Option<&'a [u8]>,
    /// The sticky cookie's value, if the request has one.
    pub sticky: Option<&'a str>,
}

/// A chosen server. Dropping it ends the request for `least_conn`.
#[derive(Debug)]
pub struct Pick {
    /// The server's index in the pool.
    pub index: usize,
    /// Its address.
    pub addr: ListenAddr,
    active: Arc<AtomicUsize>,
}

impl Drop for Pick {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct PeerState {
    current: i64,
    fails: u32,
    first_fail: Option<Instant>,
    down_until: Option<Instant>,
}

#[derive(Debug)]
struct Peer {
    spec: ServerSpec,
    /// Its addresses (several for a `resolve` name; none until it resolves).
    addrs: Mutex<Vec<ListenAddr>>,
    /// The next of them to use.
    next: AtomicUsize,
    active: Arc<AtomicUsize>,
    /// Marked down by the active health check.
    check_down: AtomicBool,
}

impl Peer {
    fn addrs(&self) -> std::sync::MutexGuard<'_, Vec<ListenAddr>> {
        self.addrs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An `upstream` group.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    peers: Vec<Peer>,
    policy: Policy,
    state: Mutex<Vec<PeerState>>,
    ring: Vec<(u32, usize)>,
    keepalive: usize,
    resolver: Option<Resolver>,
    check: Option<HealthCheck>,
    started: AtomicBool,
}

fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// The ketama ring: 160 points per unit of weight, each at the CRC32 of
/// `"<server> <n>"` (stable across restarts and machines).
fn ketama(peers: &[Peer]) -> Vec<(u32, usize)> {
    let mut ring = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        if p.spec.backup {
            continue;
        }
        for n in 0..160 * p.spec.weight {
            ring.push((crc32(format!("{} {n}", p.spec.name).as_bytes()), i));
        }
    }
    ring.sort_unstable();
    ring
}

impl Upstream {
    /// A pool of `servers` chosen by `policy`.
    pub fn new(name: impl Into<String>, servers: Vec<ServerSpec>, policy: Policy) -> Self {
        let peers: Vec<Peer> = servers
            .into_iter()
            .map(|spec| Peer {
                addrs: Mutex::new(if spec.resolve.is_some() {
                    Vec::new()
                } else {
                    vec![spec.addr.clone()]
                }),
                next: AtomicUsize::new(0),
                spec,
                active: Arc::new(AtomicUsize::new(0)),
                check_down: AtomicBool::new(false),
            })
            .collect();
        let state = peers
            .iter()
            .map(|_| PeerState {
                current: 0,
                fails: 0,
                first_fail: None,
                down_until: None,
            })
            .collect();
        Self {
            name: name.into(),
            ring: ketama(&peers),
            peers,
            policy,
            state: Mutex::new(state),
            keepalive: 0,
            resolver: None,
            check: None,
            started: AtomicBool::new(false),
        }
    }

    /// The resolver `resolve` servers are looked up with (nginx's `resolver`).
    #[must_use]
    pub fn resolver(mut self, r: Resolver) -> Self {
        self.resolver = Some(r);
        self
    }

    /// An active health check (Tengine's `check`).
    #[must_use]
    pub fn health_check(mut self, c: HealthCheck) -> Self {
        self.check = Some(c);
        self
    }

    /// Whether the group has work to do in the background ([`Upstream::start`]).
    pub fn needs_start(&self) -> bool {
        self.check.is_some() || self.peers.iter().any(|p| p.spec.resolve.is_some())
    }

    /// Starts the background work on the current tokio runtime (once): the DNS lookups
    /// of `resolve` servers and the active health check.
    ///
    /// # Panics
    /// Outside a tokio runtime, when there is work to start.
    pub fn start(self: &Arc<Self>) {
        if !self.needs_start() || self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        if self.peers.iter().any(|p| p.spec.resolve.is_some()) {
            match &self.resolver {
                Some(r) => {
                    tokio::spawn(follow_dns(self.clone(), r.clone()));
                }
                None => tracing::error!(
                    "upstream {}: \"resolve\" servers without a resolver: they stay unused",
                    self.name
                ),
            }
        }
        if let Some(c) = &self.check {
            tokio::spawn(check_health(self.clone(), c.clone()));
        }
    }

    /// nginx's `keepalive N`: up to N idle connections to the group's servers are kept
    /// for the next requests (for FastCGI with `fastcgi_keep_conn on`; HTTP backends are
    /// always pooled).
    #[must_use]
    pub fn keepalive(mut self, idle: usize) -> Self {
        self.keepalive = idle;
        self
    }

    /// The idle connections kept (`keepalive N`; 0: none).
    pub fn idle_connections(&self) -> usize {
        self.keepalive
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The group's policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// For a sticky group: the `Set-Cookie` value that keeps the session on server
    /// `index`, unless the request already carried that id (`had`).
    pub fn sticky_set_cookie(&self, index: usize, had: Option<&str>) -> Option<String> {
        let Policy::Sticky { cookie } = &self.policy else {
            return None;
        };
        let id = self.sticky_id(index);
        (had != Some(id.as_str())).then(|| format!("{cookie}={id}; Path=/; HttpOnly"))
    }

    /// How many servers the group has.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether the group has no server.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The server `index`'s spec.
    pub fn server(&self, index: usize) -> &ServerSpec {
        &self.peers[index].spec
    }

    /// The id a sticky cookie carries for server `index`.
    pub fn sticky_id(&self, index: usize) -> String {
        format!("{:08x}", crc32(self.peers[index].spec.name.as_bytes()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<PeerState>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolves host names again (a pool following DNS: a Kubernetes service, any
    /// DNS-based discovery); a name that does not resolve keeps its last address.
    pub fn resolve(&self) {
        for p in &self.peers {
            if let (ListenAddr::Tcp(_), None) = (&p.spec.addr, &p.spec.resolve) {
                if let Ok(a) = ListenAddr::parse(&p.spec.name) {
                    *p.addrs() = vec![a];
                }
            }
        }
    }

    /// Chooses a server for a request, skipping servers in `tried` (a retry) and servers
    /// that are down or failed; backups only when no primary is available. `None` when no
    /// server is available.
    pub fn pick(&self, ctx: &PickContext<'_>, tried: &[usize]) -> Option<Pick> {
        let now = Instant::now();
        let mut state = self.lock();
        let usable = |i: usize, st: &[PeerState]| {
            let peer = &self.peers[i];
            !peer.spec.down
                && !tried.contains(&i)
                && st[i].down_until.is_none_or(|t| now >= t)
                && !peer.check_down.load(Ordering::Relaxed)
                && !peer.addrs().is_empty()
        };
        // One server (the common `uwsgi_pass unix:...`): every policy picks it if usable,
        // with no candidates to gather; else the primaries first, then the backups.
        let single = self.peers.len() == 1;
        let mut index = (single && usable(0, &state)).then_some(0);
        let passes: &[bool] = if single { &[] } else { &[false, true] };
        for &backup in passes {
            let candidates: Vec<usize> = (0..self.peers.len())
                .filter(|&i| self.peers[i].spec.backup == backup && usable(i, &state))
                .collect();
            if candidates.is_empty() {
                continue;
            }
            index = Some(match (&self.policy, backup) {
                (_, true) | (Policy::RoundRobin, _) => self.smooth(&mut state, &candidates),
                (Policy::LeastConn, _) => self.least_conn(&mut state, &candidates),
                (Policy::IpHash, _) => match ctx.client {
                    Some(ip) => self.hashed(ip_hash_key(ip), &candidates),
                    None => self.smooth(&mut state, &candidates),
                },
                (Policy::Hash { consistent, .. }, _) => match ctx.key {
                    Some(k) if *consistent => self.on_ring(crc32(k), &candidates),
                    Some(k) => self.hashed(crc32(k), &candidates),
                    None => self.smooth(&mut state, &candidates),
                },
                (Policy::Sticky { .. }, _) => ctx
                    .sticky
                    .and_then(|id| {
                        candidates
                            .iter()
                            .copied()
                            .find(|&i| self.sticky_id(i) == id)
                    })
                    .unwrap_or_else(|| self.smooth(&mut state, &candidates)),
            });
            break;
        }
        let index = index?;
        let peer = &self.peers[index];
        let addr = {
            let addrs = peer.addrs();
            let n = peer.next.fetch_add(1, Ordering::Relaxed);
            addrs.get(n % addrs.len().max(1))?.clone()
        };
        peer.active.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            index,
            addr,
            active: peer.active.clone(),
        })
    }

    /// nginx's smooth weighted round robin.
    fn smooth(&self, state: &mut [PeerState], candidates: &[usize]) -> usize {
        let total: i64 = candidates
            .iter()
            .map(|&i| i64::from(self.peers[i].spec.weight))
            .sum();
        let mut best = candidates[0];
        for &i in candidates {
            state[i].current += i64::from(self.peers[i].spec.weight);
            if state[i].current > state[best].current {
                best = i;
            }
        }
        state[best].current -= total;
        best
    }

    fn least_conn(&self, state: &mut [PeerState], candidates: &[usize]) -> usize {
        // active / weight, compared as active_a * weight_b < active_b * weight_a.
        let load = |i: usize| {
            (
                self.peers[i].active.load(Ordering::Relaxed) as u64,
                u64::from(self.peers[i].spec.weight),
            )
        };
        let mut least: Vec<usize> = Vec::new();
        for &i in candidates {
            match least.first() {
                None => least.push(i),
                Some(&j) => {
                    let ((ai, wi), (aj, wj)) = (load(i), load(j));
                    if ai * wj < aj * wi {
                        least = vec![i];
                    } else if ai * wj == aj * wi {
                        least.push(i);
                    }
                }
            }
        }
        self.smooth(state, &least)
    }

    /// A hash over the candidates' weights (nginx's `hash` without `consistent`).
    fn hashed(&self, h: u32, candidates: &[usize]) -> usize {
        let total: u64 = candidates
            .iter()
            .map(|&i| u64::from(self.peers[i].spec.weight))
            .sum();
        let mut w = u64::from(h) % total;
        for &i in candidates {
            let weight = u64::from(self.peers[i].spec.weight);
            if w < weight {
                return i;
            }
            w -= weight;
        }
        candidates[0]
    }

    /// The first ring point at or after `h` whose server is a candidate.
    fn on_ring(&self, h: u32, candidates: &[usize]) -> usize {
        let start = self.ring.partition_point(|&(p, _)| p < h);
        let n = self.ring.len();
        (0..n)
            .map(|k| self.ring[(start + k) % n].1)
            .find(|i| candidates.contains(i))
            .unwrap_or(candidates[0])
    }

    /// Reports how a request to server `index` went (passive health): `max_fails`
    /// failures within `fail_timeout` make the server skipped for `fail_timeout` (never
    /// in a group of one server, as with nginx).
    pub fn report(&self, index: usize, ok: bool) {
        // As nginx: a group of one server never marks it unavailable.
        if self.peers.len() == 1 {
            return;
        }
        let spec = &self.peers[index].spec;
        let now = Instant::now();
        let mut state = self.lock();
        let st = &mut state[index];
        if ok {
            st.fails = 0;
            st.first_fail = None;
            return;
        }
        if st
            .first_fail
            .is_none_or(|t| now.duration_since(t) > spec.fail_timeout)
        {
            st.first_fail = Some(now);
            st.fails = 0;
        }
        st.fails += 1;
        if spec.max_fails > 0 && st.fails >= spec.max_fails {
            st.down_until = Some(now + spec.fail_timeout);
            st.fails = 0;
            st.first_fail = None;
            tracing::warn!(
                "upstream {}: server {} failed {} time(s): skipped for {:?}",
                self.name,
                spec.name,
                spec.max_fails,
                spec.fail_timeout
            );
        }
    }

    /// Whether server `index` is skipped now because it failed.
    pub fn is_failed(&self, index: usize) -> bool {
        self.lock()[index]
            .down_until
            .is_some_and(|t| Instant::now() < t)
    }
}

fn ip_hash_key(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(v4) => crc32(&v4.octets()[..3]),
        IpAddr::V6(v6) => crc32(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(lines: &[&str], policy: Policy) -> Upstream {
        Upstream::new(
            "t",
            lines
                .iter()
                .map(|l| ServerSpec::parse(l).unwrap())
                .collect(),
            policy,
        )
    }

    fn counts(u: &Upstream, n: usize, ctx: &PickContext<'_>) -> Vec<usize> {
        let mut c = vec![0; u.len()];
        for _ in 0..n {
            c[u.pick(ctx, &[]).unwrap().index] += 1;
        }
        c
    }

    #[test]
    fn server_lines_as_nginx_writes_them() {
        let s = ServerSpec::parse("localhost:8080 weight=2").unwrap();
        assert_eq!((s.name.as_str(), s.weight), ("localhost:8080", 2));
        let s = ServerSpec::parse("127.0.0.1:8001 weight=5 max_fails=3 fail_timeout=30s backup")
            .unwrap();
        assert_eq!(
            (s.weight, s.max_fails, s.fail_timeout, s.backup, s.down),
            (5, 3, Duration::from_secs(30), true, false)
        );
        let s = ServerSpec::parse("unix:/tmp/app.sock down").unwrap();
        assert_eq!(s.addr, ListenAddr::Unix("/tmp/app.sock".into()));
        assert!(s.down);
        assert!(matches!(
            ServerSpec::parse("127.0.0.1:1 weight=0"),
            Err(ServerSpecError::Param(_))
        ));
        assert!(matches!(
            ServerSpec::parse("127.0.0.1:1 slow_start=3"),
            Err(ServerSpecError::Param(_))
        ));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("x"), None);
    }

    #[test]
    fn smooth_weighted_round_robin_interleaves() {
        let u = pool(
            &["127.0.0.1:1 weight=5", "127.0.0.1:2", "127.0.0.1:3"],
            Policy::RoundRobin,
        );
        let order: Vec<usize> = (0..7)
            .map(|_| u.pick(&PickContext::default(), &[]).unwrap().index)
            .collect();
        // nginx's documented sequence for weights 5, 1, 1.
        assert_eq!(order, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn backup_down_and_failed_servers() {
        let u = pool(
            &[
                "127.0.0.1:1 max_fails=2 fail_timeout=1h",
                "127.0.0.1:2 down",
                "127.0.0.1:3 backup",
            ],
            Policy::RoundRobin,
        );
        assert_eq!(counts(&u, 4, &PickContext::default()), [4, 0, 0]);
        u.report(0, false);
        assert!(!u.is_failed(0), "one failure of max_fails=2");
        u.report(0, false);
        assert!(u.is_failed(0));
        assert_eq!(
            counts(&u, 3, &PickContext::default()),
            [0, 0, 3],
            "the backup takes over"
        );
        // A retry skips what was tried.
        let u = pool(&["127.0.0.1:1", "127.0.0.1:2"], Policy::RoundRobin);
        let first = u.pick(&PickContext::default(), &[]).unwrap().index;
        let second = u.pick(&PickContext::default(), &[first]).unwrap().index;
        assert_ne!(first, second);
        assert!(u.pick(&PickContext::default(), &[0, 1]).is_none());
    }

    #[test]
    fn a_single_server_is_never_marked_failed() {
        let u = pool(&["127.0.0.1:1 max_fails=1"], Policy::RoundRobin);
        u.report(0, false);
        u.report(0, false);
        assert!(!u.is_failed(0));
        assert!(u.pick(&PickContext::default(), &[]).is_some());
    }

    #[test]
    fn least_conn_prefers_the_idle_server() {
        let u = pool(&["127.0.0.1:1", "127.0.0.1:2"], Policy::LeastConn);
        let busy = u.pick(&PickContext::default(), &[]).unwrap();
        let held = busy.index;
        for _ in 0..5 {
            assert_ne!(u.pick(&PickContext::default(), &[]).unwrap().index, held);
        }
        drop(busy);
    }

    #[test]
    fn ip_hash_keeps_a_client_on_one_server() {
        let u = pool(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            Policy::IpHash,
        );
        let ctx = PickContext {
            client: Some("10.1.2.3".parse().unwrap()),
            ..Default::default()
        };
        let c = counts(&u, 10, &ctx);
        assert_eq!(c.iter().filter(|&&n| n == 10).count(), 1, "{c:?}");
        // Same /24, same server (as nginx).
        let other = PickContext {
            client: Some("10.1.2.99".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(counts(&u, 10, &other), c);
    }

    #[test]
    fn sticky_cookie_follows_a_healthy_server() {
        let u = pool(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            Policy::Sticky {
                cookie: "route".into(),
            },
        );
        let id = u.sticky_id(2);
        let ctx = PickContext {
            sticky: Some(&id),
            ..Default::default()
        };
        assert_eq!(counts(&u, 5, &ctx), [0, 0, 5]);
        u.report(2, false);
        let c = counts(&u, 4, &ctx);
        assert_eq!(c[2], 0, "a failed server loses its sessions: {c:?}");
    }

    fn keys() -> Vec<Vec<u8>> {
        (0..4000)
            .map(|n| format!("/item/{n}").into_bytes())
            .collect()
    }

    #[test]
    fn consistent_hash_moves_about_one_nth_of_the_keys() {
        let policy = Policy::Hash {
            key: "$request_uri".into(),
            consistent: true,
        };
        let four: Vec<String> = (1..=4).map(|n| format!("127.0.0.1:{n}")).collect();
        let five: Vec<String> = (1..=5).map(|n| format!("127.0.0.1:{n}")).collect();
        let u4 = pool(
            &four.iter().map(String::as_str).collect::<Vec<_>>(),
            policy.clone(),
        );
        let u5 = pool(&five.iter().map(String::as_str).collect::<Vec<_>>(), policy);
        let keys = keys();
        let mut moved = 0;
        let mut load = [0usize; 5];
        for k in &keys {
            let ctx = PickContext {
                key: Some(k),
                ..Default::default()
            };
            let (a, b) = (
                u4.pick(&ctx, &[]).unwrap().index,
                u5.pick(&ctx, &[]).unwrap().index,
            );
            load[b] += 1;
            if a != b {
                moved += 1;
                assert_eq!(b, 4, "a key only ever moves to the new server");
            }
        }
        let share = moved as f64 / keys.len() as f64;
        assert!(
            (0.12..=0.28).contains(&share),
            "{share} of the keys moved (ideal 0.2)"
        );
        assert!(load.iter().all(|&n| n > 500), "balanced: {load:?}");
        // Without `consistent`, most keys move.
        let plain = Policy::Hash {
            key: "$request_uri".into(),
            consistent: false,
        };
        let p4 = pool(
            &four.iter().map(String::as_str).collect::<Vec<_>>(),
            plain.clone(),
        );
        let p5 = pool(&five.iter().map(String::as_str).collect::<Vec<_>>(), plain);
        let moved_plain = keys
            .iter()
            .filter(|k| {
                let ctx = PickContext {
                    key: Some(k),
                    ..Default::default()
                };
                p4.pick(&ctx, &[]).unwrap().index != p5.pick(&ctx, &[]).unwrap().index
            })
            .count();
        assert!(moved_plain > keys.len() / 2, "{moved_plain}");
    }

    #[test]
    fn resolver_and_check_arguments() {
        let args = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let r = Resolver::parse(&args("127.0.0.1:5353 [::1] 10.0.0.2 valid=2s ipv6=off")).unwrap();
        assert_eq!(
            r.servers,
            [
                "127.0.0.1:5353".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
                "10.0.0.2:53".parse().unwrap()
            ]
        );
        assert_eq!((r.valid, r.ipv6), (Some(Duration::from_secs(2)), false));
        assert!(Resolver::parse(&args("valid=2s")).is_err(), "no server");
        assert!(
            Resolver::parse(&args("dns.example")).is_err(),
            "names are not addresses"
        );
        let c = HealthCheck::parse(&args("interval=3000 rise=2 fall=5 timeout=1000 type=http"))
            .unwrap();
        assert_eq!(
            (c.interval, c.rise, c.fall, c.timeout),
            (Duration::from_secs(3), 2, 5, Duration::from_secs(1))
        );
        assert!(matches!(c.kind, CheckKind::Http { .. }));
        assert!(HealthCheck::parse(&args("type=mysql")).is_err());
        assert!(HealthCheck::parse(&args("interval=0")).is_err());
        assert!(HealthCheck::parse(&args("rise=x")).is_err());
        let s = ServerSpec::parse("backend.svc.cluster.local:8001 weight=2 resolve").unwrap();
        assert_eq!(s.resolve, Some(("backend.svc.cluster.local".into(), 8001)));
        assert_eq!(s.weight, 2);
        assert!(
            ServerSpec::parse("backend resolve").is_err(),
            "a port is needed"
        );
    }

    proptest! {
        /// `resolver`, `check` and `server` arguments: any words give a value or an error.
        #[test]
        fn directive_arguments_never_panic(words in proptest::collection::vec("[a-z0-9_=:.\\[\\]-]{0,12}", 0..6)) {
            let _ = Resolver::parse(&words);
            let _ = HealthCheck::parse(&words);
            let _ = ServerSpec::parse(&words.join(" "));
        }

        /// Over a whole cycle, smooth round robin gives each server exactly its weight.
        #[test]
        fn round_robin_honours_weights(weights in proptest::collection::vec(1u32..6, 1..6)) {
            let lines: Vec<String> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| format!("127.0.0.1:{} weight={w}", i + 1))
                .collect();
            let u = pool(&lines.iter().map(String::as_str).collect::<Vec<_>>(), Policy::RoundRobin);
            let total: u32 = weights.iter().sum();
            let c = counts(&u, total as usize * 3, &PickContext::default());
            for (i, w) in weights.iter().enumerate() {
                prop_assert_eq!(c[i], *w as usize * 3);
            }
        }

        /// Any key maps to an available server, and the same one every time.
        #[test]
        fn hashing_is_stable(key in proptest::collection::vec(any::<u8>(), 0..64), consistent: bool) {
            let u = pool(
                &["127.0.0.1:1", "127.0.0.1:2 weight=3", "127.0.0.1:3"],
                Policy::Hash { key: "$k".into(), consistent },
            );
            let ctx = PickContext { key: Some(&key), ..Default::default() };
            let a = u.pick(&ctx, &[]).unwrap().index;
            prop_assert_eq!(u.pick(&ctx, &[]).unwrap().index, a);
        }
    }
}

/// nginx's `resolver ADDR... [valid=T] [ipv6=off]`: the DNS servers `resolve` names are
/// looked up with, and how long an answer holds (its TTL when `valid` is not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    /// The DNS servers (port 53 unless given).
    pub servers: Vec<SocketAddr>,
    /// `valid=T`: looked up again after this long, whatever the TTL.
    pub valid: Option<Duration>,
    /// `ipv6=off`: only A records.
    pub ipv6: bool,
    /// `resolver_timeout` (default 30 s).
    pub timeout: Duration,
}

impl Resolver {
    /// Parses the arguments of nginx's `resolver` directive.
    pub fn parse(args: &[String]) -> Result<Self, ServerSpecError> {
        let mut r = Self {
            servers: Vec::new(),
            valid: None,
            ipv6: true,
            timeout: Duration::from_secs(30),
        };
        for a in args {
            let bad = || ServerSpecError::Param(a.clone());
            match a.split_once('=') {
                Some(("valid", v)) => r.valid = Some(parse_duration(v).ok_or_else(bad)?),
                Some(("ipv6", "on")) => r.ipv6 = true,
                Some(("ipv6", "off")) => r.ipv6 = false,
                Some(("ipv4", "on")) => {}
                Some(("status_zone", _)) => {}
                Some(_) => return Err(bad()),
                None => {
                    let addr = a
                        .parse::<SocketAddr>()
                        .or_else(|_| a.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                        .or_else(|_| {
                            a.trim_start_matches('[')
                                .trim_end_matches(']')
                                .parse::<IpAddr>()
                                .map(|ip| SocketAddr::new(ip, 53))
                        })
                        .map_err(|_| bad())?;
                    r.servers.push(addr);
                }
            }
        }
        if r.servers.is_empty() {
            return Err(ServerSpecError::Empty);
        }
        Ok(r)
    }
}

/// Looks the group's `resolve` names up again and again; a failed lookup keeps the last
/// addresses.
async fn follow_dns(up: Arc<Upstream>, r: Resolver) {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    let servers = r
        .servers
        .iter()
        .map(|a| {
            let mut udp = ConnectionConfig::udp();
            udp.port = a.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = a.port();
            NameServerConfig::new(a.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut builder = hickory_resolver::Resolver::builder_with_config(
        ResolverConfig::from_parts(None, Vec::new(), servers),
        hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    );
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = r.timeout;
    opts.attempts = 1;
    opts.ip_strategy = if r.ipv6 {
        hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6
    } else {
        hickory_resolver::config::LookupIpStrategy::Ipv4Only
    };
    let resolver = match builder.build() {
        Ok(resolver) => resolver,
        Err(e) => {
            tracing::error!("upstream {}: resolver: {e}", up.name);
            return;
        }
    };
    loop {
        let mut again = r.valid.unwrap_or(Duration::from_secs(300));
        for p in &up.peers {
            let Some((host, port)) = &p.spec.resolve else {
                continue;
            };
            let name = format!("{}.", host.trim_end_matches('.'));
            match resolver.lookup_ip(name.as_str()).await {
                Ok(found) => {
                    if r.valid.is_none() {
                        let ttl = found
                            .valid_until()
                            .saturating_duration_since(Instant::now());
                        again = again.min(ttl.max(Duration::from_secs(1)));
                    }
                    let mut addrs: Vec<ListenAddr> = found
                        .iter()
                        .map(|ip| ListenAddr::Tcp(SocketAddr::new(ip, *port)))
                        .collect();
                    addrs.sort_by_key(ToString::to_string);
                    let mut current = p.addrs();
                    if *current != addrs {
                        tracing::info!(
                            "upstream {}: {host} now resolves to {}",
                            up.name,
                            addrs
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                        *current = addrs;
                    }
                }
                Err(e) => {
                    again = again.min(Duration::from_secs(5));
                    tracing::warn!(
                        "upstream {}: cannot resolve {host}: {e} (its last addresses stay)",
                        up.name
                    );
                }
            }
        }
        tokio::time::sleep(again).await;
    }
}

/// Tengine's `check`: an active health check of every server of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// `interval=MS` (default 30 s).
    pub interval: Duration,
    /// `rise=N` successes in a row bring a server back (default 2).
    pub rise: u32,
    /// `fall=N` failures in a row take it out (default 5).
    pub fall: u32,
    /// `timeout=MS` for one probe (default 1 s).
    pub timeout: Duration,
    /// `type=tcp` (a connection) or `type=http` (a request and its status).
    pub kind: CheckKind,
    /// `default_down=true`: servers start out down until they pass (the gateway's
    /// default is `false`: each worker process checks on its own, and a fresh worker
    /// should not refuse traffic until its first checks).
    pub default_down: bool,
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckKind {
    /// The server accepts a connection.
    Tcp,
    /// The server answers `send` (`check_http_send`) with a status whose class is in
    /// `alive` (`check_http_expect_alive http_2xx http_3xx`: 2 and 3).
    Http {
        /// The request sent.
        send: String,
        /// The status classes (the hundreds digit) that mean alive.
        alive: Vec<u16>,
    },
}

impl HealthCheck {
    /// Parses the arguments of Tengine's `check` directive (times in milliseconds).
    pub fn parse(args: &[String]) -> Result<Self, ServerSpecError> {
        let mut c = Self {
            interval: Duration::from_secs(30),
            rise: 2,
            fall: 5,
            timeout: Duration::from_secs(1),
            kind: CheckKind::Tcp,
            default_down: false,
        };
        for a in args {
            let bad = || ServerSpecError::Param(a.clone());
            let ms = |v: &str| v.parse::<u64>().ok().map(Duration::from_millis);
            match a.split_once('=') {
                Some(("interval", v)) => {
                    c.interval = ms(v).filter(|d| !d.is_zero()).ok_or_else(bad)?
                }
                Some(("timeout", v)) => {
                    c.timeout = ms(v).filter(|d| !d.is_zero()).ok_or_else(bad)?
                }
                Some(("rise", v)) => c.rise = v.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?,
                Some(("fall", v)) => c.fall = v.parse().ok().filter(|&n| n > 0).ok_or_else(bad)?,
                Some(("default_down", "true")) => c.default_down = true,
                Some(("default_down", "false")) => c.default_down = false,
                Some(("type", "tcp")) => c.kind = CheckKind::Tcp,
                Some(("type", "http")) => {
                    c.kind = CheckKind::Http {
                        send: "GET / HTTP/1.0\r\n\r\n".into(),
                        alive: vec![2, 3],
                    };
                }
                _ => return Err(bad()),
            }
        }
        Ok(c)
    }
}

/// One probe of `addr`.
async fn probe(addr: &ListenAddr, kind: &CheckKind) -> std::io::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn ask<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut s: S,
        kind: &CheckKind,
    ) -> std::io::Result<bool> {
        let CheckKind::Http { send, alive } = kind else {
            return Ok(true);
        };
        s.write_all(send.as_bytes()).await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        // `HTTP/1.1 200 OK`
        let status = std::str::from_utf8(&head)
            .ok()
            .and_then(|h| h.split_whitespace().nth(1)?.parse::<u16>().ok());
        Ok(status.is_some_and(|s| alive.contains(&(s / 100))))
    }
    match addr {
        ListenAddr::Tcp(a) => ask(tokio::net::TcpStream::connect(a).await?, kind).await,
        ListenAddr::Unix(p) => ask(tokio::net::UnixStream::connect(p).await?, kind).await,
    }
}

/// Probes every server of the group every `interval`, marking servers down after `fall`
/// failures in a row and up after `rise` successes.
async fn check_health(up: Arc<Upstream>, c: HealthCheck) {
    let n = up.peers.len();
    let (mut ups, mut downs) = (vec![0u32; n], vec![0u32; n]);
    if c.default_down {
        for p in &up.peers {
            p.check_down.store(true, Ordering::Relaxed);
        }
    }
    loop {
        let probes = up.peers.iter().map(|p| {
            let addr = p.addrs().first().cloned();
            let kind = c.kind.clone();
            async move {
                match addr {
                    _ if p.spec.down => None,
                    None => None,
                    Some(a) => Some(matches!(
                        tokio::time::timeout(c.timeout, probe(&a, &kind)).await,
                        Ok(Ok(true))
                    )),
                }
            }
        });
        let results = futures_util::future::join_all(probes).await;
        for (i, ok) in results.into_iter().enumerate() {
            let Some(ok) = ok else { continue };
            let p = &up.peers[i];
            let down = p.check_down.load(Ordering::Relaxed);
            if ok {
                downs[i] = 0;
                ups[i] += 1;
                if down && ups[i] >= c.rise {
                    p.check_down.store(false, Ordering::Relaxed);
                    tracing::info!(
                        "upstream {}: server {} passed {} check(s): back in use",
                        up.name,
                        p.spec.name,
                        ups[i]
                    );
                }
            } else {
                ups[i] = 0;
                downs[i] += 1;
                if !down && downs[i] >= c.fall {
                    p.check_down.store(true, Ordering::Relaxed);
                    tracing::warn!(
                        "upstream {}: server {} failed {} check(s): out of use",
                        up.name,
                        p.spec.name,
                        downs[i]
                    );
                }
            }
        }
        tokio::time::sleep(c.interval).await;
    }
}
