//! The CONNECT proxy for the agent's tools (`HTTPS_PROXY` points at the
//! gateway): a TCP tunnel to `host:port` when the run's policy allows that
//! host and port ([`host_allowed`]) and the name resolves, here, to an
//! address a run may reach ([`address_allowed`]). The tunnel goes to the
//! address that was checked (never re-resolved), ends when idle or too old,
//! and gets one audit line with the bytes both ways.
//!
//! Plain-HTTP proxying (`GET http://host/...`) is refused: only TLS through
//! CONNECT, so the gateway never reads or forwards a tool's cleartext.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::server::State;
use super::{Grant, Kind, Refusal, audit, reasons};
use crate::api::AllowHost;

/// A tunnel with no byte either way for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// No tunnel lives longer than this.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(3600);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports of an allow-hosts entry without ports.
const DEFAULT_PORT: u16 = 443;

/// How a host matched the policy's allow-hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostMatch {
    /// By an exact (non-wildcard) entry: that host may resolve to private
    /// and loopback addresses.
    pub exact: bool,
}

/// Lower case, without a trailing dot or IPv6 brackets.
fn normalize_host(host: &str) -> String {
    let host = host.trim_end_matches('.');
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host.to_ascii_lowercase()
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The host (normalised) and port of a CONNECT target `host:port`
/// (`[v6]:port` for IPv6); `None` unless both are well-formed.
pub fn parse_target(authority: &str) -> Option<(String, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return None;
    }
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = normalize_host(host);
    (host.parse::<IpAddr>().is_ok() || is_dns_name(&host)).then_some((host, port))
}

/// Whether the policy's `allow` list lets the run open `host:port`:
/// an entry equal to the host (case-insensitive; addresses compared as
/// addresses), or `*.suffix` for any name below `suffix` (never the apex,
/// never an address), with the port in the entry's ports (none: 443).
/// An exact match wins over a wildcard one.
pub fn host_allowed(host: &str, port: u16, allow: &[AllowHost]) -> Option<HostMatch> {
    let host = normalize_host(host);
    let host_ip = host.parse::<IpAddr>().ok();
    let mut found = None;
    for entry in allow {
        let port_ok = if entry.ports.is_empty() {
            port == DEFAULT_PORT
        } else {
            entry.ports.iter().any(|p| *p == i32::from(port))
        };
        if !port_ok {
            continue;
        }
        let pattern = normalize_host(&entry.host);
        if let Some(suffix) = pattern.strip_prefix("*.") {
            let below = host
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.'));
            if host_ip.is_none() && !suffix.is_empty() && below {
                found = Some(HostMatch { exact: false });
            }
        } else {
            let same = match (host_ip, pattern.parse::<IpAddr>().ok()) {
                (Some(a), Some(b)) => a == b,
                (None, None) => pattern == host,
                _ => false,
            };
            if same {
                return Some(HostMatch { exact: true });
            }
        }
    }
    found
}

/// An address range (`a.b.c.d/n` or IPv6 `x::/n`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix`; `None` when malformed.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, prefix) = s.trim().split_once('/')?;
        let net: IpAddr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Cidr { net, prefix })
    }

    /// Whether `ip` is in the range (same family only).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses `--gateway-denied-cidrs`; the error names the first bad entry.
pub fn parse_cidrs(list: &[String]) -> Result<Vec<Cidr>, String> {
    list.iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| Cidr::parse(s).ok_or_else(|| format!("not a CIDR range: {s:?}")))
        .collect()
}

/// The IPv4 address an IPv6 one stands for (mapped `::ffff:a.b.c.d`,
/// compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`), else itself.
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let low = Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]));
    let compatible = s[..6] == [0; 6] && u32::from(low) > 1;
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if compatible || nat64 { IpAddr::V4(low) } else { ip }
}

/// Never a tunnel's end: this host, link-local (the cloud metadata address
/// 169.254.169.254 among them), multicast, broadcast, reserved.
fn never_reachable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            o[0] == 0 || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast() || o[0] >= 240
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Inside: loopback, private, shared (CGNAT), unique-local, site-local.
fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback() || v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6 == Ipv6Addr::LOCALHOST || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfec0
        }
    }
}

/// Whether a tunnel may go to `ip`: never to link-local, multicast,
/// broadcast or unspecified addresses; to loopback, private, CGNAT and the
/// cluster's ranges only when the host matched an exact allow-hosts entry
/// (`exact_entry`). IPv6 forms of IPv4 addresses are judged as IPv4.
pub fn address_allowed(ip: IpAddr, exact_entry: bool, cluster: &[Cidr]) -> bool {
    let v = canonical(ip);
    if never_reachable(v) {
        return false;
    }
    if exact_entry {
        return true;
    }
    !is_internal(v) && !cluster.iter().any(|c| c.contains(ip) || c.contains(v))
}

/// Activity shared by both sides of a tunnel.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// One side of a tunnel, counting the bytes read from it.
struct Metered<T> {
    inner: T,
    read: Arc<AtomicU64>,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read.fetch_add(n as u64, Ordering::Relaxed);
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways between `client` and `upstream` until both are done,
/// nothing moved for `idle`, or `total` has passed. Returns the bytes from
/// the client and the bytes to it.
pub(crate) async fn tunnel<A, B>(client: A, upstream: B, idle: Duration, total: Duration) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let (bytes_in, bytes_out) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut client = Metered {
        inner: client,
        read: bytes_in.clone(),
        activity: activity.clone(),
    };
    let mut upstream = Metered {
        inner: upstream,
        read: bytes_out.clone(),
        activity: activity.clone(),
    };
    {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let deadline = tokio::time::sleep(total);
        tokio::pin!(deadline);
        loop {
            let left = idle.saturating_sub(activity.idle_for());
            if left.is_zero() {
                break;
            }
            tokio::select! {
                _ = &mut copy => break,
                _ = &mut deadline => break,
                _ = tokio::time::sleep(left) => {}
            }
        }
    }
    (bytes_in.load(Ordering::Relaxed), bytes_out.load(Ordering::Relaxed))
}

fn refusal_response(refusal: &Refusal) -> Response {
    let body = serde_json::json!({ "message": refusal.message, "reason": refusal.reason });
    (refusal.status, axum::Json(body)).into_response()
}

fn refuse(status: StatusCode, reason: &'static str, message: impl std::fmt::Display) -> Refusal {
    Refusal::new(status, reason, format!("claude-operator gateway: {message}"))
}

/// Where a checked CONNECT goes: a connected socket to an allowed address.
async fn open(state: &State, grant: &Grant, authority: &str) -> Result<TcpStream, Refusal> {
    let Some((host, port)) = parse_target(authority) else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            reasons::MALFORMED,
            "a CONNECT target is host:port",
        ));
    };
    let Some(matched) = host_allowed(&host, port, &grant.facts.allow_hosts) else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            reasons::HOST_NOT_ALLOWED,
            format!("{host}:{port} is not in the policy's network.allowHosts"),
        ));
    };
    // A bad setting must not open the cluster: refuse everything.
    let cluster = parse_cidrs(&state.args.cluster_cidrs).map_err(|e| {
        refuse(
            StatusCode::FORBIDDEN,
            reasons::ADDRESS_NOT_ALLOWED,
            format!("--gateway-denied-cidrs is invalid ({e})"),
        )
    })?;
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => {
            let unresolved = || {
                refuse(
                    StatusCode::BAD_GATEWAY,
                    reasons::UPSTREAM_ERROR,
                    format!("{host} could not be resolved"),
                )
            };
            tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host.as_str(), port)))
                .await
                .map_err(|_| unresolved())?
                .map_err(|_| unresolved())?
                .collect()
        }
    };
    let allowed: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| address_allowed(a.ip(), matched.exact, &cluster))
        .collect();
    if allowed.is_empty() {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            reasons::ADDRESS_NOT_ALLOWED,
            format!("{host} resolves only to addresses a run may not reach"),
        ));
    }
    for addr in allowed {
        if let Ok(Ok(stream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            return Ok(stream);
        }
    }
    Err(refuse(
        StatusCode::BAD_GATEWAY,
        reasons::UPSTREAM_ERROR,
        format!("{host}:{port} could not be reached"),
    ))
}

/// Serves one CONNECT request for the run of `grant`: 200 and a tunnel, or
/// a refusal. Anything but CONNECT (a plain-HTTP proxy request) is refused.
pub async fn handle(state: Arc<State>, grant: Arc<Grant>, req: Request) -> Response {
    let run = format!("{}/{}", grant.facts.namespace, grant.facts.run);
    let method = req.method().clone();
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    let target = authority.clone().unwrap_or_default();
    let log = |status: StatusCode, bytes_in: u64, bytes_out: u64, reason: &str| {
        audit::log(&audit::Record {
            run: run.clone(),
            kind: Some(Kind::Connect),
            target: target.clone(),
            method: method.as_str(),
            status: status.as_u16(),
            bytes_in,
            bytes_out,
            allowed: reason.is_empty(),
            reason,
            ..audit::Record::default()
        });
    };
    let outcome = if method != Method::CONNECT {
        Err(refuse(
            StatusCode::FORBIDDEN,
            reasons::HOST_NOT_ALLOWED,
            "only HTTPS through CONNECT is proxied; plain HTTP is not",
        ))
    } else if let Some(authority) = &authority {
        open(&state, &grant, authority).await
    } else {
        Err(refuse(
            StatusCode::BAD_REQUEST,
            reasons::MALFORMED,
            "a CONNECT target is host:port",
        ))
    };
    let upstream = match outcome {
        Ok(stream) => stream,
        Err(refusal) => {
            log(refusal.status, 0, 0, refusal.reason);
            return refusal_response(&refusal);
        }
    };
    let on_upgrade = hyper::upgrade::on(req);
    let (run, target, method) = (run.clone(), target.clone(), method.clone());
    tokio::spawn(async move {
        let (bytes_in, bytes_out) = match on_upgrade.await {
            Ok(upgraded) => tunnel(TokioIo::new(upgraded), upstream, IDLE_TIMEOUT, TOTAL_TIMEOUT).await,
            Err(_) => (0, 0),
        };
        audit::log(&audit::Record {
            run,
            kind: Some(Kind::Connect),
            target,
            method: method.as_str(),
            status: StatusCode::OK.as_u16(),
            bytes_in,
            bytes_out,
            allowed: true,
            ..audit::Record::default()
        });
    });
    Response::new(Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(host: &str, ports: &[i32]) -> AllowHost {
        AllowHost {
            host: host.into(),
            ports: ports.to_vec(),
        }
    }

    #[test]
    fn targets_are_host_and_port() {
        let cases: &[(&str, Option<(&str, u16)>)] = &[
            ("registry.npmjs.org:443", Some(("registry.npmjs.org", 443))),
            ("Registry.NPMJS.org.:8443", Some(("registry.npmjs.org", 8443))),
            ("127.0.0.1:80", Some(("127.0.0.1", 80))),
            ("[::1]:443", Some(("::1", 443))),
            ("registry.npmjs.org", None),
            ("registry.npmjs.org:0", None),
            ("registry.npmjs.org:65536", None),
            (":443", None),
            ("::1:443", None),
            ("bad host:443", None),
            ("a..b:443", None),
            ("user@host:443", None),
        ];
        for (authority, want) in cases {
            let got = parse_target(authority);
            assert_eq!(got.as_ref().map(|(h, p)| (h.as_str(), *p)), *want, "{authority}");
        }
    }

    #[test]
    fn hosts_match_exact_names_and_wildcard_subdomains_on_allowed_ports() {
        let allow = [
            entry("registry.npmjs.org", &[]),
            entry("*.pythonhosted.org", &[]),
            entry("Proxy.Golang.org", &[443, 8443]),
            entry("127.0.0.1", &[8080]),
            entry("*.0.0.1", &[]),
            entry("::1", &[9000]),
            entry("*.example.com", &[]),
            entry("api.example.com", &[]),
        ];
        let exact = Some(HostMatch { exact: true });
        let wild = Some(HostMatch { exact: false });
        let cases: &[(&str, u16, Option<HostMatch>)] = &[
            ("registry.npmjs.org", 443, exact),
            ("REGISTRY.npmjs.org.", 443, exact),
            ("registry.npmjs.org", 80, None),
            ("evil-registry.npmjs.org", 443, None),
            ("registry.npmjs.org.evil.com", 443, None),
            ("files.pythonhosted.org", 443, wild),
            ("a.b.pythonhosted.org", 443, wild),
            ("pythonhosted.org", 443, None),
            ("evilpythonhosted.org", 443, None),
            ("proxy.golang.org", 8443, exact),
            ("proxy.golang.org", 80, None),
            ("127.0.0.1", 8080, exact),
            ("127.0.0.1", 443, None), // a wildcard never matches an address
            ("::1", 9000, exact),
            ("0:0:0:0:0:0:0:1", 9000, exact),
            ("api.example.com", 443, exact),
            ("www.example.com", 443, wild),
            ("example.com", 443, None),
            ("github.com", 443, None),
        ];
        for (host, port, want) in cases {
            assert_eq!(host_allowed(host, *port, &allow), *want, "{host}:{port}");
        }
        assert_eq!(host_allowed("anything.org", 443, &[]), None);
        assert_eq!(host_allowed("x.org", 443, &[entry("*.", &[])]), None);
    }

    #[test]
    fn addresses_a_run_may_reach() {
        let cluster = parse_cidrs(&["10.96.0.0/12".into(), "203.0.113.0/24".into(), "fd00:10::/64".into()]).unwrap();
        // (address, allowed for a wildcard entry, allowed for an exact entry)
        let cases: &[(&str, bool, bool)] = &[
            ("93.184.216.34", true, true),
            ("2606:2800:220:1:248:1893:25c8:1946", true, true),
            // Loopback, private, CGNAT, ULA: only for an exact entry.
            ("127.0.0.1", false, true),
            ("127.255.0.9", false, true),
            ("::1", false, true),
            ("10.0.0.1", false, true),
            ("172.16.0.1", false, true),
            ("172.31.255.255", false, true),
            ("172.32.0.1", true, true),
            ("192.168.1.1", false, true),
            ("100.64.0.1", false, true),
            ("100.127.255.255", false, true),
            ("100.128.0.1", true, true),
            ("fc00::1", false, true),
            ("fd12:3456::1", false, true),
            // The cluster's ranges.
            ("203.0.113.7", false, true),
            ("fd00:10::5", false, true),
            // IPv6 forms of IPv4 addresses are judged as IPv4.
            ("::ffff:127.0.0.1", false, true),
            ("::ffff:10.0.0.1", false, true),
            ("::ffff:169.254.169.254", false, false),
            ("::ffff:93.184.216.34", true, true),
            ("::10.0.0.1", false, true),
            ("64:ff9b::a00:1", false, true),
            ("64:ff9b::a9fe:a9fe", false, false),
            // Never: metadata and other link-local, unspecified, multicast, broadcast.
            ("169.254.169.254", false, false),
            ("169.254.1.1", false, false),
            ("fe80::1", false, false),
            ("0.0.0.0", false, false),
            ("0.1.2.3", false, false),
            ("::", false, false),
            ("224.0.0.1", false, false),
            ("ff02::1", false, false),
            ("255.255.255.255", false, false),
            ("240.0.0.1", false, false),
        ];
        for (ip, wildcard, exact) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(address_allowed(ip, false, &cluster), *wildcard, "{ip} wildcard");
            assert_eq!(address_allowed(ip, true, &cluster), *exact, "{ip} exact");
        }
    }

    #[test]
    fn cidrs_parse_strictly() {
        assert!(parse_cidrs(&["10.0.0.0/8".into(), " fd00::/8 ".into(), String::new()]).is_ok());
        for bad in ["10.0.0.0", "10.0.0.0/33", "fd00::/129", "ten/8", "10.0.0.0/-1"] {
            let err = parse_cidrs(&[bad.into()]).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(!all.contains("::1".parse().unwrap()));
        let one = Cidr::parse("10.1.2.3/32").unwrap();
        assert!(one.contains("10.1.2.3".parse().unwrap()));
        assert!(!one.contains("10.1.2.4".parse().unwrap()));
    }

    #[tokio::test]
    async fn an_idle_tunnel_is_closed() {
        let (client, _client_far) = tokio::io::duplex(64);
        let (upstream, _upstream_far) = tokio::io::duplex(64);
        // Both far ends stay open and silent: only the idle timeout ends it.
        let (bytes_in, bytes_out) = tunnel(client, upstream, Duration::from_millis(50), TOTAL_TIMEOUT).await;
        assert_eq!((bytes_in, bytes_out), (0, 0));
    }

    #[tokio::test]
    async fn a_tunnel_counts_bytes_both_ways() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut client_far) = tokio::io::duplex(64);
        let (upstream, mut upstream_far) = tokio::io::duplex(64);
        let task = tokio::spawn(tunnel(client, upstream, IDLE_TIMEOUT, TOTAL_TIMEOUT));
        client_far.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        upstream_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        upstream_far.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        client_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        drop(client_far);
        drop(upstream_far);
        assert_eq!(task.await.unwrap(), (5, 2));
    }
}
