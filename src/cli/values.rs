//! Value parsers of the CLI's own flags (rates, durations and groups are in
//! `units`): percentages, shares, seconds, `--adapt`, `--http`, and `HOST[:PORT]`.

use crate::error::{Context, Error, Result};
use loopcast_proto::AdaptMode;
use std::net::SocketAddr;

/// A percentage from 0 to 100, with or without a `%` sign.
pub(super) fn parse_percent(text: &str) -> std::result::Result<f64, String> {
    match text.strip_suffix('%').unwrap_or(text).parse::<f64>() {
        Ok(v) if (0.0..=100.0).contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not a percentage between 0 and 100")),
    }
}

pub(super) fn parse_adapt(text: &str) -> std::result::Result<AdaptMode, String> {
    match text {
        "min" => Ok(AdaptMode::Min),
        "avg" => Ok(AdaptMode::Avg),
        _ => Err(format!("{text:?} is not min or avg")),
    }
}

pub(super) fn parse_seconds(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0.1 and 3600"
        )),
    }
}

/// Resolves `HOST[:PORT]` (a name, an IPv4 address or a bracketed IPv6 address)
/// given to `flag`, with `default_port`. A name with addresses of both families
/// is taken as IPv4.
pub(crate) fn resolve_server(flag: &str, text: &str, default_port: u16) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let with_port = if text
        .rsplit_once(':')
        .is_some_and(|(host, p)| p.parse::<u16>().is_ok() && !host.ends_with(':'))
    {
        text.to_string()
    } else {
        format!("{text}:{default_port}")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .context(|| format!("{flag} {text}: cannot resolve"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| Error::new(format!("{flag} {text}: no address")))
}

/// Where the director's HTTP API listens, if anywhere (`--http ADDR:PORT|off`).
#[derive(Debug, Clone, Copy)]
pub(super) struct HttpListen(pub(super) Option<SocketAddr>);

pub(super) fn parse_http(text: &str) -> std::result::Result<HttpListen, String> {
    if text == "off" {
        return Ok(HttpListen(None));
    }
    text.parse().map(|a| HttpListen(Some(a))).map_err(|_| {
        format!("{text:?} is not ADDR:PORT (an IP address and a port; IPv6 in brackets) or off")
    })
}

pub(super) fn parse_share(text: &str) -> std::result::Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=0.9).contains(&v) => Ok(v),
        _ => Err(format!("{text:?} is not a share between 0 and 0.9")),
    }
}
