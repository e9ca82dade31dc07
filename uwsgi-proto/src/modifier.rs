//! The two modifier bytes of a uwsgi packet header.
//!
//! `modifier1` selects what the packet is (a WSGI request, a ping, a spooler job, ...);
//! `modifier2` is a sub-code whose meaning depends on `modifier1`. Both are kept as
//! newtypes over `u8` with the documented values as associated constants, so a value this
//! crate has no name for is carried through unchanged, never rejected and never lost.

use std::fmt;

/// The first modifier byte: the packet type (uWSGI `Protocol.rst`).
///
/// ```
/// use uwsgi_proto::Modifier1;
/// assert_eq!(Modifier1::WSGI.name(), Some("WSGI request"));
/// assert_eq!(Modifier1(42).name(), None); // unknown values are kept as they are
/// assert_eq!(Modifier1::from(100u8), Modifier1::PING);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Modifier1(pub u8);

/// The second modifier byte: a sub-code whose meaning depends on [`Modifier1`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Modifier2(pub u8);

macro_rules! named_values {
    ($ty:ident { $( $(#[$doc:meta])* $name:ident = $value:expr, $label:expr; )* }) => {
        impl $ty {
            $( $(#[$doc])* pub const $name: Self = Self($value); )*

            /// The documented name of this value, or `None` for a value without one.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some($label), )*
                    _ => None,
                }
            }
        }
    };
}

named_values!(Modifier1 {
    /// 0: a WSGI (Python) request; the vars block is followed by the request body.
    /// This is what nginx's `uwsgi_pass` sends by default.
    WSGI = 0, "WSGI request";
    /// 5: a PSGI (Perl) request.
    PSGI = 5, "PSGI request";
    /// 6: a Lua WSAPI request.
    LUA = 6, "Lua WSAPI request";
    /// 7: a Rack (Ruby) request.
    RACK = 7, "Rack request";
    /// 8: a JVM (JWSGI / Ring) request.
    JVM = 8, "JVM request";
    /// 9: a CGI plugin request.
    CGI = 9, "CGI request";
    /// 10: a management interface request; modifier2 is the management flag.
    MANAGEMENT = 10, "management request";
    /// 14: a PHP request.
    PHP = 14, "PHP request";
    /// 15: a Mono ASP.NET request.
    MONO = 15, "Mono ASP.NET request";
    /// 17: a spooler job: the vars become the spooler's dict.
    SPOOLER = 17, "spooler request";
    /// 18: a direct call of a C-like symbol (symcall).
    SYMCALL = 18, "symcall request";
    /// 22: raw code evaluation; the payload is a code string, modifier2 picks the language.
    EVAL = 22, "code evaluation";
    /// 23: the XSLT plugin.
    XSLT = 23, "XSLT request";
    /// 24: the V8 plugin.
    V8 = 24, "V8 request";
    /// 25: the GridFS plugin.
    GRIDFS = 25, "GridFS request";
    /// 26: the FastFuncs / GlusterFS plugins (uWSGI's code and docs disagree on 26/27).
    FASTFUNC = 26, "FastFuncs request";
    /// 27: the GlusterFS plugin.
    GLUSTERFS = 27, "GlusterFS request";
    /// 28: the Rados plugin.
    RADOS = 28, "Rados request";
    /// 30: a WSGI request whose PATH_INFO has the SCRIPT_NAME prefix removed (deprecated).
    WSGI_MANAGE_PATH_INFO = 30, "WSGI request (manage PATH_INFO)";
    /// 31: generic message passing (reserved).
    MESSAGE = 31, "generic message";
    /// 32: char array passing (reserved).
    MESSAGE_ARRAY = 32, "char array message";
    /// 33: marshalled object passing (reserved).
    MESSAGE_MARSHAL = 33, "marshalled message";
    /// 48: an SNMP request or response.
    SNMP = 48, "SNMP";
    /// 72: ASCII `H`: the bytes `HTTP` read as a uwsgi header (a raw HTTP response).
    RAW_HTTP = 72, "raw HTTP (the bytes \"HTTP\")";
    /// 73: a multicast announce; modifier2 is the announce type.
    MULTICAST_ANNOUNCE = 73, "multicast announce";
    /// 74: a custom multicast message.
    MULTICAST = 74, "multicast message";
    /// 95: cluster membership; modifier2 is the action.
    CLUSTER_NODE = 95, "cluster membership";
    /// 96: remote logging.
    REMOTE_LOGGING = 96, "remote logging";
    /// 97: brutal reload.
    RELOAD = 97, "brutal reload";
    /// 98: graceful reload.
    GRACEFUL_RELOAD = 98, "graceful reload";
    /// 99: request the configuration from a node.
    CONFIG_FROM_NODE = 99, "configuration request";
    /// 100: ping (modifier2 0) and pong (modifier2 1).
    PING = 100, "ping";
    /// 101: echo: the payload comes back raw, with no header.
    ECHO = 101, "echo";
    /// 109: a Legion message.
    LEGION = 109, "Legion message";
    /// 110: a uwsgi signal; modifier2 is the signal number.
    SIGNAL = 110, "signal";
    /// 111: a cache operation; modifier2 says which.
    CACHE = 111, "cache operation";
    /// 123: a special condition signalled to corerouters.
    CORE_ROUTER_SIGNAL = 123, "corerouter signal";
    /// 173: RPC: the payload is a uwsgi array (function name, then arguments).
    RPC = 173, "RPC";
    /// 200: the close mark on a persistent connection.
    PERSISTENT_CLOSE = 200, "persistent connection close";
    /// 224: a subscription packet.
    SUBSCRIPTION = 224, "subscription";
    /// 255: a generic response; modifier2's meaning depends on the request.
    RESPONSE = 255, "response";
});

impl Modifier2 {
    /// 0: the value every plain request (and nginx by default) sends.
    pub const ZERO: Self = Self(0);
    /// With [`Modifier1::PING`]: a ping request.
    pub const PING_REQUEST: Self = Self(0);
    /// With [`Modifier1::PING`]: the pong reply.
    pub const PONG: Self = Self(1);
    /// With [`Modifier1::RESPONSE`] after a spooler or signal request: failure.
    pub const RESULT_FAILED: Self = Self(0);
    /// With [`Modifier1::RESPONSE`] after a spooler or signal request: success.
    pub const RESULT_OK: Self = Self(1);
    /// With [`Modifier1::RPC`]: the whole reply, header included, goes to the caller.
    pub const RPC_RAW: Self = Self(1);
    /// With [`Modifier1::CACHE`]: read.
    pub const CACHE_READ: Self = Self(0);
    /// With [`Modifier1::CACHE`]: write.
    pub const CACHE_WRITE: Self = Self(1);
    /// With [`Modifier1::CACHE`]: delete.
    pub const CACHE_DELETE: Self = Self(2);
    /// With [`Modifier1::CACHE`]: dict-based operation.
    pub const CACHE_DICT: Self = Self(3);
    /// With [`Modifier1::CLUSTER_NODE`]: add a node.
    pub const CLUSTER_ADD: Self = Self(0);
    /// With [`Modifier1::CLUSTER_NODE`]: remove a node.
    pub const CLUSTER_REMOVE: Self = Self(1);
    /// With [`Modifier1::CLUSTER_NODE`]: enable a node.
    pub const CLUSTER_ENABLE: Self = Self(2);
    /// With [`Modifier1::CLUSTER_NODE`]: disable a node.
    pub const CLUSTER_DISABLE: Self = Self(3);
    /// With [`Modifier1::RELOAD`] / [`Modifier1::GRACEFUL_RELOAD`]: the request.
    pub const RELOAD_REQUEST: Self = Self(0);
    /// With [`Modifier1::RELOAD`] / [`Modifier1::GRACEFUL_RELOAD`]: the confirmation.
    pub const RELOAD_CONFIRM: Self = Self(1);
    /// With [`Modifier1::EVAL`]: evaluate Python.
    pub const EVAL_PYTHON: Self = Self(0);
    /// With [`Modifier1::EVAL`]: evaluate Perl.
    pub const EVAL_PERL: Self = Self(5);
    /// With [`Modifier1::MULTICAST_ANNOUNCE`]: announce a hostname.
    pub const ANNOUNCE_HOSTNAME: Self = Self(0);
}

impl From<u8> for Modifier1 {
    fn from(v: u8) -> Self {
        Self(v)
    }
}
impl From<Modifier1> for u8 {
    fn from(m: Modifier1) -> Self {
        m.0
    }
}
impl From<u8> for Modifier2 {
    fn from(v: u8) -> Self {
        Self(v)
    }
}
impl From<Modifier2> for u8 {
    fn from(m: Modifier2) -> Self {
        m.0
    }
}

impl Modifier1 {
    /// Whether packets of this type carry a vars block followed by a request body
    /// (the application requests: WSGI, PSGI, Rack, CGI, PHP, ...).
    pub const fn is_request(self) -> bool {
        matches!(self.0, 0 | 5..=9 | 14 | 15 | 18 | 23..=25 | 30)
    }
}

impl fmt::Debug for Modifier1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "Modifier1({} {n})", self.0),
            None => write!(f, "Modifier1({})", self.0),
        }
    }
}
impl fmt::Display for Modifier1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
impl fmt::Debug for Modifier2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Modifier2({})", self.0)
    }
}
impl fmt::Display for Modifier2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(u8::from(Modifier1::from(b)), b);
            assert_eq!(u8::from(Modifier2::from(b)), b);
        }
    }

    #[test]
    fn documented_values_have_names() {
        assert_eq!(Modifier1::PING.0, 100);
        assert_eq!(Modifier1::RPC.0, 173);
        assert_eq!(Modifier1::SPOOLER.0, 17);
        assert_eq!(Modifier1::RESPONSE.name(), Some("response"));
        assert_eq!(Modifier1(4).name(), None);
        assert_eq!(format!("{:?}", Modifier1(42)), "Modifier1(42)");
        assert!(Modifier1::WSGI.is_request());
        assert!(!Modifier1::PING.is_request());
    }
}
