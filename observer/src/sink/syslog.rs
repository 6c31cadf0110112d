//! Syslog output: RFC 5424 messages over UDP, TCP (RFC 6587 octet
//! counting) or a local datagram socket (`/dev/log` style).
//!
//! Message layout: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`
//! where MSGID is `failure` or `diagnosis` and MSG is the record's JSON,
//! byte for byte the line of the NDJSON log. A SIEM then needs one parser
//! for the file and the syslog feed (rsyslog `mmjsonparse`, Elastic's
//! `decode_json_fields`, Splunk `KV_MODE=json`), and no field of the
//! contract is lost or renamed in a structured-data translation. MSGID and
//! the severity let a relay route or filter without parsing the JSON.
//!
//! Never blocks the pipeline: records are handed over with `try_send` to a
//! bounded queue (a full queue counts a drop), a task formats and sends
//! them. UDP and unix datagrams that fail are counted and skipped; TCP
//! keeps the message it could not write, reconnects with exponential
//! backoff and resends it (at-least-once). Warnings are rate-limited.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use thiserror::Error;
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpStream, UdpSocket, UnixDatagram},
    sync::mpsc,
};

use super::{
    outputs::{OutputStats, WarnLimiter},
    Record,
};
use crate::{
    config::{Facility, SyslogConfig, Transport},
    diagnose::record::Status,
};

// The names are the configuration's (config::Facility); the numbers are
// the wire's, so they are kept with the code that writes them.
impl Facility {
    pub fn code(self) -> u8 {
        match self {
            Facility::Kern => 0,
            Facility::User => 1,
            Facility::Mail => 2,
            Facility::Daemon => 3,
            Facility::Auth => 4,
            Facility::Syslog => 5,
            Facility::Lpr => 6,
            Facility::News => 7,
            Facility::Uucp => 8,
            Facility::Cron => 9,
            Facility::Authpriv => 10,
            Facility::Ftp => 11,
            Facility::Local0 => 16,
            Facility::Local1 => 17,
            Facility::Local2 => 18,
            Facility::Local3 => 19,
            Facility::Local4 => 20,
            Facility::Local5 => 21,
            Facility::Local6 => 22,
            Facility::Local7 => 23,
        }
    }
}

#[derive(Debug, Error)]
enum SendError {
    #[error("resolving {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(String),
    #[error("sending to {0}: {1}")]
    Send(String, std::io::Error),
    #[error("sending to {0}: timed out")]
    SendTimeout(String),
    #[error("the receiver closed the connection")]
    Closed,
}

/// The fixed parts of every message.
#[derive(Clone, Debug)]
pub struct Header {
    pub facility: Facility,
    pub hostname: String,
    pub app_name: String,
    pub procid: u32,
}

impl Header {
    pub fn new(cfg: &SyslogConfig) -> Header {
        let hostname = if cfg.hostname.is_empty() { system_hostname() } else { cfg.hostname.clone() };
        Header { facility: cfg.facility, hostname, app_name: cfg.app_name.clone(), procid: std::process::id() }
    }
}

fn system_hostname() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let clean: String = raw.trim().chars().filter(|c| c.is_ascii_graphic()).take(255).collect();
    // RFC 5424: NILVALUE when the name is unknown.
    if clean.is_empty() {
        "-".to_owned()
    } else {
        clean
    }
}

/// Severity by what a record means to an operator: a new or growing
/// problem is a warning or an error, updates and single failures are
/// notices and information.
pub fn severity(record: &Record) -> u8 {
    match record {
        Record::Failure(_) => 6, // informational
        Record::Diagnosis(d) => match d.diagnosis.status {
            Status::Escalated => 3, // error
            Status::Open | Status::Ongoing => 4,
            Status::Resolved => 5, // notice
        },
    }
}

/// One RFC 5424 message (without transport framing).
pub fn format(header: &Header, record: &Record, now: SystemTime) -> Result<Vec<u8>, serde_json::Error> {
    let pri = u16::from(header.facility.code()) * 8 + u16::from(severity(record));
    let msgid = match record {
        Record::Failure(_) => "failure",
        Record::Diagnosis(_) => "diagnosis",
    };
    let ts = humantime::format_rfc3339_micros(now);
    // No structured data (`-`), and no BOM before MSG: a BOM would have to
    // be stripped by every JSON parser downstream, and RFC 5424 allows
    // MSG-ANY.
    let mut out =
        format!("<{pri}>1 {ts} {} {} {} {msgid} - ", header.hostname, header.app_name, header.procid).into_bytes();
    serde_json::to_writer(&mut out, record)?;
    Ok(out)
}

/// RFC 6587 octet counting: `MSG-LEN SP SYSLOG-MSG`. Unlike newline
/// framing it survives any byte in the message.
pub fn octet_counted(msg: &[u8]) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg);
    out
}

/// The largest UDP payload over IPv4; bigger messages cannot be sent at all.
const MAX_UDP: usize = 65_507;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The handle the sink task offers records to.
pub struct SyslogSink {
    tx: mpsc::Sender<Record>,
    failures: bool,
    diagnoses: bool,
    stats: Arc<OutputStats>,
}

impl SyslogSink {
    /// Starts the sending task. Nothing is connected yet: an unreachable
    /// receiver at start-up is the same as one that goes away later.
    pub fn start(cfg: &SyslogConfig, stats: Arc<OutputStats>) -> (SyslogSink, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.queue);
        let sender = Sender {
            header: Header::new(cfg),
            transport: cfg.transport,
            address: cfg.address.clone(),
            stats: stats.clone(),
            warn: WarnLimiter::new("syslog", Duration::from_secs(60)),
            udp: None,
            tcp: None,
            unix: None,
            backoff: BACKOFF_START,
        };
        let task = tokio::spawn(sender.run(rx));
        (SyslogSink { tx, failures: cfg.failures, diagnoses: cfg.diagnoses, stats }, task)
    }

    /// Queues a record when its type is wanted; never waits.
    pub fn offer(&self, record: &Record) {
        let wanted = match record {
            Record::Failure(_) => self.failures,
            Record::Diagnosis(_) => self.diagnoses,
        };
        if wanted && self.tx.try_send(record.clone()).is_err() {
            OutputStats::inc(&self.stats.syslog_dropped);
        }
    }
}

struct Sender {
    header: Header,
    transport: Transport,
    address: String,
    stats: Arc<OutputStats>,
    warn: WarnLimiter,
    udp: Option<UdpSocket>,
    tcp: Option<TcpStream>,
    unix: Option<UnixDatagram>,
    backoff: Duration,
}

impl Sender {
    async fn run(mut self, mut rx: mpsc::Receiver<Record>) {
        while let Some(record) = rx.recv().await {
            let msg = match format(&self.header, &record, SystemTime::now()) {
                Ok(m) => m,
                Err(e) => {
                    OutputStats::inc(&self.stats.syslog_errors);
                    self.warn.warn(format_args!("formatting a record: {e}"));
                    continue;
                }
            };
            match self.transport {
                Transport::Tcp => self.send_tcp(&octet_counted(&msg)).await,
                Transport::Udp | Transport::Unix => match self.send_datagram(&msg).await {
                    Ok(()) => OutputStats::inc(&self.stats.syslog_sent),
                    Err(e) => {
                        OutputStats::inc(&self.stats.syslog_errors);
                        self.warn.warn(format_args!("{e}; the message is dropped"));
                        // A new socket next time: the old one may be bound
                        // to an address that went away.
                        self.udp = None;
                        self.unix = None;
                    }
                },
            }
        }
        if let Some(mut s) = self.tcp.take() {
            let _ = s.shutdown().await;
        }
    }

    async fn send_datagram(&mut self, msg: &[u8]) -> Result<(), SendError> {
        if msg.len() > MAX_UDP {
            let e = std::io::Error::other(format!("message of {} bytes exceeds a datagram", msg.len()));
            return Err(SendError::Send(self.address.clone(), e));
        }
        let address = self.address.clone();
        let send_error = |e| SendError::Send(address.clone(), e);
        let send = async {
            match self.transport {
                Transport::Unix => {
                    let sock = match self.unix.take() {
                        Some(s) => s,
                        None => UnixDatagram::unbound().map_err(send_error)?,
                    };
                    let sent = sock.send_to(msg, PathBuf::from(&address)).await.map_err(send_error);
                    self.unix = Some(sock);
                    sent?;
                }
                _ => {
                    let sock = match self.udp.take() {
                        Some(s) => s,
                        None => {
                            let target = resolve(&address).await?;
                            let local: SocketAddr =
                                if target.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
                            let connect_error = |e| SendError::Connect(address.clone(), e);
                            let sock = UdpSocket::bind(local).await.map_err(connect_error)?;
                            sock.connect(target).await.map_err(connect_error)?;
                            sock
                        }
                    };
                    let sent = sock.send(msg).await.map_err(send_error);
                    self.udp = Some(sock);
                    sent?;
                }
            }
            Ok(())
        };
        tokio::time::timeout(SEND_TIMEOUT, send).await.map_err(|_| SendError::SendTimeout(self.address.clone()))?
    }

    /// Sends one framed message, reconnecting with backoff until it is
    /// written: while this waits the queue fills and new records are
    /// dropped at the door, which is what bounds memory.
    async fn send_tcp(&mut self, frame: &[u8]) {
        loop {
            match self.try_tcp(frame).await {
                Ok(()) => {
                    OutputStats::inc(&self.stats.syslog_sent);
                    self.backoff = BACKOFF_START;
                    return;
                }
                Err(e) => {
                    self.tcp = None;
                    OutputStats::inc(&self.stats.syslog_errors);
                    self.warn.warn(format_args!("{e}; retrying in {:?}", self.backoff));
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn try_tcp(&mut self, frame: &[u8]) -> Result<(), SendError> {
        if let Some(stream) = &self.tcp {
            // A receiver that closed its end is only noticed by a write
            // after the one it loses: look for its FIN before writing.
            let mut probe = [0u8; 1];
            if let Ok(0) = stream.try_read(&mut probe) {
                self.tcp = None;
            }
        }
        if self.tcp.is_none() {
            let target = resolve(&self.address).await?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
                .await
                .map_err(|_| SendError::ConnectTimeout(self.address.clone()))?
                .map_err(|e| SendError::Connect(self.address.clone(), e))?;
            let _ = stream.set_nodelay(true);
            self.tcp = Some(stream);
        }
        let Some(stream) = self.tcp.as_mut() else { return Err(SendError::Closed) };
        match tokio::time::timeout(SEND_TIMEOUT, stream.write_all(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SendError::Send(self.address.clone(), e)),
            Err(_) => Err(SendError::SendTimeout(self.address.clone())),
        }
    }
}

async fn resolve(address: &str) -> Result<SocketAddr, SendError> {
    let mut addrs = tokio::net::lookup_host(address).await.map_err(|e| SendError::Resolve(address.to_owned(), e))?;
    addrs.next().ok_or_else(|| SendError::NoAddress(address.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn failure() -> Record {
        crate::sink::fixtures::failure(8080, 1)
    }

    fn header() -> Header {
        Header { facility: Facility::Local3, hostname: "host1".into(), app_name: "observer".into(), procid: 42 }
    }

    #[test]
    fn message_is_rfc5424_with_the_json_record_as_msg() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let msg = String::from_utf8(format(&header(), &failure(), now).unwrap()).unwrap();
        // local3 (19) * 8 + informational (6)
        let prefix = "<158>1 2023-11-14T22:13:20.123456Z host1 observer 42 failure - ";
        assert!(msg.starts_with(prefix), "{msg}");
        let json: serde_json::Value = serde_json::from_str(&msg[prefix.len()..]).unwrap();
        assert_eq!(json["event"]["action"], "refused");
        assert_eq!(json["destination"]["port"], 8080);
    }

    #[test]
    fn octet_counting_prefixes_the_byte_length() {
        assert_eq!(octet_counted("<13>1 é".as_bytes()), b"8 <13>1 \xc3\xa9".to_vec());
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        // A TCP receiver that never accepts past its backlog is not needed:
        // nothing listens on the port, so the sender sits in its backoff.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = SyslogConfig {
            enabled: true,
            transport: Transport::Tcp,
            address: format!("127.0.0.1:{port}"),
            queue: 4,
            ..SyslogConfig::default()
        };
        let stats = Arc::new(OutputStats::default());
        let (sink, task) = SyslogSink::start(&cfg, stats.clone());
        let started = Instant::now();
        for _ in 0..100 {
            sink.offer(&failure());
        }
        assert!(started.elapsed() < Duration::from_millis(100), "offer waited");
        // One in flight at most, four queued: the rest are drops.
        let dropped = OutputStats::get(&stats.syslog_dropped);
        assert!((95..=96).contains(&dropped), "{dropped}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(OutputStats::get(&stats.syslog_errors) >= 1);
        drop(sink);
        task.abort();
    }

    #[tokio::test]
    async fn tcp_reconnects_and_resends_after_the_receiver_comes_back() {
        use tokio::io::AsyncReadExt as _;
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let cfg = SyslogConfig {
            enabled: true,
            transport: Transport::Tcp,
            address: addr.to_string(),
            ..SyslogConfig::default()
        };
        let stats = Arc::new(OutputStats::default());
        let (sink, task) = SyslogSink::start(&cfg, stats.clone());
        sink.offer(&failure());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(OutputStats::get(&stats.syslog_sent), 0);
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.unwrap().unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await.unwrap().unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let (len, rest) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rest.len(), "{text}");
        assert!(rest.starts_with("<30>1 "), "{text}"); // daemon (3) * 8 + informational
        assert_eq!(OutputStats::get(&stats.syslog_sent), 1);
        drop(sink);
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
}
