//! The application side: what answers nginx's `fastcgi_pass`.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    BeginRequest, Error, HEADER_LEN, Params, ProtocolStatus, RecordHeader, RecordType, Role,
    client::encode_stream, decode_params, encode_end_request, encode_pair, encode_record,
    encode_unknown_type, parse_record,
};
use crate::Env;

/// What the application side answers and accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `FCGI_MAX_CONNS` in GET_VALUES_RESULT.
    pub max_conns: u32,
    /// `FCGI_MAX_REQS` in GET_VALUES_RESULT, and the most requests active at once on one
    /// connection (more are refused with OVERLOADED).
    pub max_reqs: u32,
    /// `FCGI_MPXS_CONNS`: whether several requests may be active on one connection; if
    /// not, a concurrent BEGIN_REQUEST is refused with CANT_MPX_CONN.
    pub multiplex: bool,
    /// Whether the Authorizer role is served (else refused with UNKNOWN_ROLE).
    pub authorizer: bool,
    /// Whether the Filter role is served (else refused with UNKNOWN_ROLE).
    pub filter: bool,
    /// The largest PARAMS stream accepted for one request.
    pub max_params: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_conns: 1024,
            max_reqs: 1024,
            multiplex: true,
            authorizer: false,
            filter: false,
            max_params: 1 << 20,
        }
    }
}

/// What the web server asked for, in the order it asked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A request whose PARAMS stream is complete; its body follows as `Stdin` events.
    Request {
        /// The request id.
        id: u16,
        /// The role.
        role: Role,
        /// Whether the web server keeps the connection after this request.
        keep_conn: bool,
        /// The CGI params.
        env: Env,
    },
    /// A piece of the request body.
    Stdin {
        /// The request id.
        id: u16,
        /// The bytes.
        data: Bytes,
    },
    /// The request body is complete.
    StdinEnd {
        /// The request id.
        id: u16,
    },
    /// A piece of the Filter role's data file.
    Data {
        /// The request id.
        id: u16,
        /// The bytes.
        data: Bytes,
    },
    /// The data file is complete.
    DataEnd {
        /// The request id.
        id: u16,
    },
    /// The web server aborted the request: answer with [`ServerConnection::end_request`]
    /// as soon as possible.
    Abort {
        /// The request id.
        id: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Params,
    Stdin,
    Data,
    InputDone,
}

#[derive(Debug)]
enum Acc {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

#[derive(Debug)]
struct Active {
    id: u16,
    role: Role,
    keep_conn: bool,
    phase: Phase,
    params: Acc,
    params_len: usize,
    stderr_used: bool,
}

/// The application side of one FastCGI connection, sans-IO.
///
/// Feed it the connection's read buffer with [`poll_event`](Self::poll_event); it
/// consumes whole records and yields [`Event`]s. Requests are kept apart by id, so
/// interleaved (multiplexed) requests work. What the protocol answers by itself
/// (GET_VALUES_RESULT, UNKNOWN_TYPE, END_REQUEST refusals) is queued: send
/// [`take_output`](Self::take_output) after each call. The application answers with
/// [`write_stdout`](Self::write_stdout), [`write_stderr`](Self::write_stderr) and
/// [`end_request`](Self::end_request).
///
/// A PARAMS stream is decoded as one stream, so a pair split over two records decodes;
/// a single PARAMS record (what nginx sends) is used in place, without a copy.
///
/// ```
/// use bytes::BytesMut;
/// use cgi_family::{Env, fastcgi::{self, Event, ServerConfig, ServerConnection}};
///
/// let mut env = Env::new();
/// env.push("REQUEST_METHOD", "GET");
/// let mut wire = BytesMut::new();
/// fastcgi::encode_request(1, false, &env, b"", &mut wire)?;
///
/// let mut conn = ServerConnection::new(ServerConfig::default());
/// let Some(Event::Request { id, env, .. }) = conn.poll_event(&mut wire)? else { panic!() };
/// assert_eq!(env.get("REQUEST_METHOD"), Some(&b"GET"[..]));
/// assert_eq!(conn.poll_event(&mut wire)?, Some(Event::StdinEnd { id }));
///
/// let mut out = BytesMut::new();
/// conn.write_stdout(id, b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nhi", &mut out)?;
/// let keep_conn = conn.end_request(id, 0, &mut out);
/// assert!(!keep_conn);
/// # Ok::<(), cgi_family::fastcgi::Error>(())
/// ```
#[derive(Debug)]
pub struct ServerConnection {
    config: ServerConfig,
    active: Vec<Active>,
    out: BytesMut,
}

impl ServerConnection {
    /// A connection with `config`.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            active: Vec::new(),
            out: BytesMut::new(),
        }
    }

    /// Consumes whole records from `src` until one yields an event; `Ok(None)` when more
    /// bytes are needed. After an error, close the connection.
    pub fn poll_event(&mut self, src: &mut BytesMut) -> Result<Option<Event>, Error> {
        loop {
            let Some((record, used)) = parse_record(src)? else {
                return Ok(None);
            };
            let header = record.header;
            let content_len = usize::from(header.content_length);
            let raw = src.split_to(used).freeze();
            let content = raw.slice(HEADER_LEN..HEADER_LEN + content_len);
            if let Some(event) = self.handle(header, content)? {
                return Ok(Some(event));
            }
        }
    }

    /// Replies the protocol queued by itself (send them to the web server).
    pub fn take_output(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// The ids of the active requests.
    pub fn active_requests(&self) -> impl Iterator<Item = u16> + '_ {
        self.active.iter().map(|a| a.id)
    }

    fn find(&mut self, id: u16) -> Option<&mut Active> {
        self.active.iter_mut().find(|a| a.id == id)
    }

    fn handle(&mut self, h: RecordHeader, content: Bytes) -> Result<Option<Event>, Error> {
        let id = h.request_id;
        let t = h.record_type;
        let unexpected = Error::UnexpectedRecord {
            record_type: t,
            request_id: id,
        };
        if t.name().is_none() {
            encode_unknown_type(t, &mut self.out);
            return Ok(None);
        }
        if id == 0 {
            if t != RecordType::GET_VALUES {
                return Err(unexpected);
            }
            self.get_values(&content)?;
            return Ok(None);
        }
        match t {
            RecordType::BEGIN_REQUEST => {
                let begin = BeginRequest::parse(&content)?;
                if self.find(id).is_some() {
                    return Err(unexpected);
                }
                let served = match begin.role {
                    Role::RESPONDER => true,
                    Role::AUTHORIZER => self.config.authorizer,
                    Role::FILTER => self.config.filter,
                    _ => false,
                };
                let refusal = if !served {
                    Some(ProtocolStatus::UNKNOWN_ROLE)
                } else if !self.config.multiplex && !self.active.is_empty() {
                    Some(ProtocolStatus::CANT_MPX_CONN)
                } else if self.active.len() >= self.config.max_reqs as usize {
                    Some(ProtocolStatus::OVERLOADED)
                } else {
                    None
                };
                match refusal {
                    Some(status) => encode_end_request(id, 0, status, &mut self.out),
                    None => self.active.push(Active {
                        id,
                        role: begin.role,
                        keep_conn: begin.keep_conn(),
                        phase: Phase::Params,
                        params: Acc::Empty,
                        params_len: 0,
                        stderr_used: false,
                    }),
                }
                Ok(None)
            }
            RecordType::ABORT_REQUEST => Ok(self.find(id).is_some().then_some(Event::Abort { id })),
            RecordType::PARAMS => {
                let max = self.config.max_params;
                // Records for an inactive id are ignored (spec 3.3).
                let Some(a) = self.find(id) else {
                    return Ok(None);
                };
                if a.phase != Phase::Params {
                    return Err(unexpected);
                }
                if !content.is_empty() {
                    a.params_len += content.len();
                    if a.params_len > max {
                        return Err(Error::ParamsTooLarge { limit: max });
                    }
                    a.params = match std::mem::replace(&mut a.params, Acc::Empty) {
                        Acc::Empty => Acc::One(content),
                        Acc::One(first) => {
                            let mut m = BytesMut::with_capacity(first.len() + content.len());
                            m.put_slice(&first);
                            m.put_slice(&content);
                            Acc::Many(m)
                        }
                        Acc::Many(mut m) => {
                            m.put_slice(&content);
                            Acc::Many(m)
                        }
                    };
                    return Ok(None);
                }
                let stream = match std::mem::replace(&mut a.params, Acc::Empty) {
                    Acc::Empty => Bytes::new(),
                    Acc::One(b) => b,
                    Acc::Many(m) => m.freeze(),
                };
                let env = decode_params(&stream)?;
                a.phase = Phase::Stdin;
                Ok(Some(Event::Request {
                    id,
                    role: a.role,
                    keep_conn: a.keep_conn,
                    env,
                }))
            }
            RecordType::STDIN => {
                let Some(a) = self.find(id) else {
                    return Ok(None);
                };
                if a.phase != Phase::Stdin {
                    return Err(unexpected);
                }
                if content.is_empty() {
                    a.phase = if a.role == Role::FILTER {
                        Phase::Data
                    } else {
                        Phase::InputDone
                    };
                    return Ok(Some(Event::StdinEnd { id }));
                }
                Ok(Some(Event::Stdin { id, data: content }))
            }
            RecordType::DATA => {
                let Some(a) = self.find(id) else {
                    return Ok(None);
                };
                if a.phase != Phase::Data {
                    return Err(unexpected);
                }
                if content.is_empty() {
                    a.phase = Phase::InputDone;
                    return Ok(Some(Event::DataEnd { id }));
                }
                Ok(Some(Event::Data { id, data: content }))
            }
            _ => Err(unexpected),
        }
    }

    fn get_values(&mut self, content: &[u8]) -> Result<(), Error> {
        let query = Params::parse(content)?;
        let mut body = Vec::new();
        for (name, _) in query {
            let value = match name {
                b"FCGI_MAX_CONNS" => self.config.max_conns.to_string(),
                b"FCGI_MAX_REQS" => self.config.max_reqs.to_string(),
                b"FCGI_MPXS_CONNS" => u8::from(self.config.multiplex).to_string(),
                _ => continue, // unknown names are left out (spec 4.1)
            };
            encode_pair(name, value.as_bytes(), &mut body)?;
        }
        encode_record(RecordType::GET_VALUES_RESULT, 0, &body, &mut self.out)
    }

    /// Writes response bytes for request `id` as STDOUT records (split at 65535).
    pub fn write_stdout<B: BufMut>(
        &mut self,
        id: u16,
        data: &[u8],
        dst: &mut B,
    ) -> Result<(), Error> {
        encode_stream(RecordType::STDOUT, id, data, dst)
    }

    /// Writes error text for request `id` as STDERR records (nginx logs it).
    pub fn write_stderr<B: BufMut>(
        &mut self,
        id: u16,
        data: &[u8],
        dst: &mut B,
    ) -> Result<(), Error> {
        if let Some(a) = self.find(id) {
            a.stderr_used |= !data.is_empty();
        }
        encode_stream(RecordType::STDERR, id, data, dst)
    }

    /// Ends request `id`: closes its STDOUT (and STDERR, if used) stream and writes
    /// END_REQUEST with `app_status` and REQUEST_COMPLETE. Returns whether the web server
    /// asked to keep the connection (`FCGI_KEEP_CONN`); if not, close it once no request
    /// is active.
    pub fn end_request<B: BufMut>(&mut self, id: u16, app_status: u32, dst: &mut B) -> bool {
        let pos = self.active.iter().position(|a| a.id == id);
        let active = pos.map(|i| self.active.swap_remove(i));
        let empty = |t: RecordType| RecordHeader::new(t, id, 0).to_bytes();
        dst.put_slice(&empty(RecordType::STDOUT));
        if active.as_ref().is_some_and(|a| a.stderr_used) {
            dst.put_slice(&empty(RecordType::STDERR));
        }
        encode_end_request(id, app_status, ProtocolStatus::REQUEST_COMPLETE, dst);
        active.is_some_and(|a| a.keep_conn)
    }
}
