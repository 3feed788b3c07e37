//! Who the client is, and how often it failed to authenticate.
//!
//! The client address is the TCP peer's, unless the peer is a trusted proxy
//! (`listener.x_forwarded_for_authorized_addrs`, as Vault's option of that name): then it is the
//! last address the proxy appended to `X-Forwarded-For`. A header from any other peer is ignored,
//! so a client cannot choose whose failures it is counted against.
//!
//! [`AuthThrottle`] counts failed authentications per client address (an IPv6 client per /64, since
//! one host holds a whole /64) in fixed windows; an address over the limit is answered 429 with
//! `Retry-After` until its window ends. Other addresses are never slowed by it. Memory is bounded:
//! at most [`MAX_TRACKED`] addresses are tracked; past that, expired windows are dropped, and when
//! every tracked address is still in its window, new addresses share one overflow bucket.

use crate::locks::MutexExt;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

/// Addresses tracked by the throttle at the most.
pub const MAX_TRACKED: usize = 65_536;

pub use crate::config::cidr::{Cidr, canonical};

/// The client's address for throttling and the audit trail, and whether it came from
/// `X-Forwarded-For`.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> (IpAddr, bool) {
    let peer = canonical(peer);
    if !trusted.iter().any(|c| c.contains(peer)) {
        return (peer, false);
    }
    // The proxy appends the address it saw to the right; anything to its left came from the client.
    let last = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .rfind(|a| !a.trim().is_empty())
        .and_then(|a| a.trim().parse::<IpAddr>().ok());
    match last {
        Some(ip) => (canonical(ip), true),
        None => (peer, false),
    }
}

/// What the throttle counts an address as: IPv6 clients by their /64.
fn bucket(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The bucket shared by new addresses while the table is full of live windows.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

struct Window {
    started: Instant,
    failures: u32,
}

pub struct AuthThrottle {
    limit: u32,
    window: Duration,
    table: Mutex<HashMap<IpAddr, Window>>,
    /// Whether any authentication has failed since start (set under `table`'s lock, never
    /// cleared): until one has, a request's check takes neither the lock nor the clock.
    any: AtomicBool,
}

impl AuthThrottle {
    pub fn new(limit: u32, window: Duration) -> AuthThrottle {
        AuthThrottle {
            limit,
            window,
            table: Mutex::new(HashMap::new()),
            any: AtomicBool::new(false),
        }
    }

    /// `Err(retry_after)` when `ip` has used up its failures in the current window.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(());
        }
        let table = self.table.lock_recover();
        let now = Instant::now();
        let key = bucket(ip);
        let w = table
            .get(&key)
            .or_else(|| table.get(&OVERFLOW).filter(|_| table.len() >= MAX_TRACKED));
        match w {
            Some(w) if w.failures >= self.limit => {
                let left = self.window.saturating_sub(now.duration_since(w.started));
                if left.is_zero() { Ok(()) } else { Err(left) }
            }
            _ => Ok(()),
        }
    }

    /// Counts one failed authentication of `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut table = self.table.lock_recover();
        let mut key = bucket(ip);
        if !table.contains_key(&key) && table.len() >= MAX_TRACKED {
            let window = self.window;
            table.retain(|_, w| now.duration_since(w.started) < window);
            if table.len() >= MAX_TRACKED {
                key = OVERFLOW;
            }
        }
        let w = table.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(w.started) >= self.window {
            w.started = now;
            w.failures = 0;
        }
        w.failures = w.failures.saturating_add(1);
        self.any.store(true, Ordering::Release);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table.lock_recover().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.1.0.0/16").unwrap_or_else(|_| {
            Cidr::parse("255.255.255.255/32").unwrap_or_else(|e| panic!("{e}"))
        });
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")));
        assert!(Cidr::parse("127.0.0.1").is_ok_and(|c| c.contains(ip("127.0.0.1"))));
        assert!(Cidr::parse("fd00::/8").is_ok_and(|c| c.contains(ip("fd12::1"))));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("10.0.0.0/+8").is_err());
        assert!(Cidr::parse("lb.example").is_err());
        assert!(Cidr::parse("0.0.0.0/0").is_ok_and(|c| c.contains(ip("203.0.113.9"))));
        assert!(
            Cidr::parse("10.0.0.0/12")
                .is_ok_and(|c| c.contains(ip("10.15.0.1")) && !c.contains(ip("10.16.0.1")))
        );
    }

    #[test]
    fn forwarded_for_only_from_trusted_peers_and_only_the_last_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "6.6.6.6, 192.0.2.7"
                .parse()
                .unwrap_or_else(|_| unreachable!()),
        );
        let lb = [Cidr::parse("127.0.0.0/8").unwrap_or_else(|_| unreachable!())];
        assert_eq!(
            client_address(ip("127.0.0.1"), &h, &lb),
            (ip("192.0.2.7"), true)
        );
        assert_eq!(
            client_address(ip("198.51.100.1"), &h, &lb),
            (ip("198.51.100.1"), false)
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), &HeaderMap::new(), &lb),
            (ip("127.0.0.1"), false)
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), &h, &[]),
            (ip("127.0.0.1"), false)
        );
    }

    #[test]
    fn throttle_counts_per_address_and_ipv6_per_64() {
        let t = AuthThrottle::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(t.check(ip("192.0.2.1")).is_ok());
            t.failed(ip("192.0.2.1"));
        }
        let wait = t.check(ip("192.0.2.1"));
        assert!(wait.is_err_and(|d| d > Duration::from_secs(50)));
        // Another address is not slowed.
        assert!(t.check(ip("192.0.2.2")).is_ok());
        for i in 0..3 {
            t.failed(ip(&format!("2001:db8::{i}")));
        }
        assert!(t.check(ip("2001:db8::ffff")).is_err());
        assert!(t.check(ip("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn throttle_window_ends_and_memory_is_bounded() {
        let t = AuthThrottle::new(1, Duration::from_millis(1));
        t.failed(ip("192.0.2.1"));
        let start = Instant::now();
        while t.check(ip("192.0.2.1")).is_err() {
            assert!(start.elapsed() < Duration::from_secs(5));
            std::thread::yield_now();
        }
        let t = AuthThrottle::new(1, Duration::from_secs(60));
        for i in 0..(MAX_TRACKED as u32 + 10) {
            t.failed(IpAddr::V4(std::net::Ipv4Addr::from(i + 1)));
        }
        assert!(t.tracked() <= MAX_TRACKED + 1);
        // Addresses beyond the table share the overflow bucket, which is throttled too.
        assert!(t.check(ip("203.0.113.200")).is_err());
    }
}
