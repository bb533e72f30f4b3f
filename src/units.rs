//! Parsing of command-line values: rates with K/M/G suffixes, durations, and multicast group addresses.

use std::net::SocketAddr;

/// The port of a group given without one (the default groups' port).
pub const DEFAULT_GROUP_PORT: u16 = 7700;
/// Default UDP port of a director.
pub const DEFAULT_DIRECTOR_PORT: u16 = 7790;

/// Parses a duration: a number of seconds, or with a unit: 90s, 30m, 2h, 1d.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => 0,
    };
    match number.parse::<u64>() {
        Ok(n) if n > 0 && scale > 0 => Ok(std::time::Duration::from_secs(n.saturating_mul(scale))),
        _ => Err(format!(
            "{text:?} is not a duration in the future: a whole number with s, m, h or d (90s, 30m, 2h)"
        )),
    }
}

/// Parses a rate in bits per second: "100M", "1.5G", "800k", "2000000".
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let not_a_rate = || format!("{text:?} is not a rate in bits/s (examples: 100M, 1.5G, 800K)");
    let (number, scale) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let scale = match c.to_ascii_uppercase() {
                'K' => 1e3,
                'M' => 1e6,
                'G' => 1e9,
                _ => return Err(not_a_rate()),
            };
            (&t[..i], scale)
        }
        _ => (t, 1.0),
    };
    let value: f64 = number.parse().map_err(|_| not_a_rate())?;
    let bps = value * scale;
    if !(1000.0..=100e9).contains(&bps) {
        return Err(format!("rate {text:?} is out of range (1K to 100G bits/s)"));
    }
    Ok(bps as u64)
}

/// Formats a duration as people write one: "1h30m", "45s".
pub fn format_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// Formats bits per second with a suffix, e.g. "100 Mbit/s".
pub fn format_rate(bps: f64) -> String {
    if bps >= 1e9 {
        format!("{:.2} Gbit/s", bps / 1e9)
    } else if bps >= 1e6 {
        format!("{:.1} Mbit/s", bps / 1e6)
    } else {
        format!("{:.0} kbit/s", bps / 1e3)
    }
}

/// Formats a byte count, e.g. "512.0 MiB".
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Parses a multicast group "G:P" with G in 224.0.0.0/4, or "[G]:P" with G in
/// ff00::/8; without a port ("G", "[G]" or a bare IPv6 "G") the port is 7700.
pub fn parse_group(text: &str) -> Result<SocketAddr, String> {
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return parse_group(&SocketAddr::new(ip, DEFAULT_GROUP_PORT).to_string());
    }
    let addr: SocketAddr = text.parse().map_err(|_| {
        format!("{text:?} is not GROUP:PORT (examples: 239.255.77.1:7700, [ff15::77]:7700)")
    })?;
    if !addr.ip().is_multicast() {
        return Err(format!(
            "{} is not a multicast address (use 224.0.0.0/4, e.g. 239.255.77.1, or ff00::/8, e.g. ff15::77)",
            addr.ip()
        ));
    }
    if addr.port() == 0 {
        return Err("port 0 cannot be used for a group".into());
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        for bad in ["0", "0m", "-5m", "5x", "m", "", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("100M"), Ok(100_000_000));
        assert_eq!(parse_rate("1.5g"), Ok(1_500_000_000));
        assert_eq!(parse_rate("800K"), Ok(800_000));
        assert_eq!(parse_rate("2000000"), Ok(2_000_000));
        for bad in ["", "M", "fast", "10X", "-5M", "1", "1000G", "NaN"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn groups() {
        assert!(parse_group("239.255.77.1:7700").is_ok());
        assert!(parse_group("10.0.0.1:7700").is_err());
        assert_eq!(
            parse_group("239.1.1.1"),
            Ok("239.1.1.1:7700".parse().unwrap())
        );
        assert_eq!(
            parse_group("ff15::77"),
            Ok("[ff15::77]:7700".parse().unwrap())
        );
        assert_eq!(
            parse_group("[ff15::77]"),
            Ok("[ff15::77]:7700".parse().unwrap())
        );
        assert!(parse_group("10.0.0.1").is_err());
        assert!(parse_group("239.1.1.1:0").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(512 << 20), "512.0 MiB");
        assert_eq!(format_bytes(10), "10 B");
        assert_eq!(format_rate(2.5e9), "2.50 Gbit/s");
    }
}

/// A file name from the network, fit for a terminal: as it is when it is one safe
/// path component, else quoted with its control characters escaped, so that a
/// name cannot move the cursor, retitle or clear the terminal (threat T17).
pub fn display_name(name: &str) -> std::borrow::Cow<'_, str> {
    match loopcast_proto::manifest::check_name(name) {
        Ok(()) => name.into(),
        Err(_) => format!("{name:?}").into(),
    }
}

/// Text from another host fit for a terminal: control characters escaped.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    match text.chars().any(char::is_control) {
        false => text.into(),
        true => text
            .chars()
            .map(|c| match c.is_control() {
                true => c.escape_default().to_string(),
                false => c.to_string(),
            })
            .collect::<String>()
            .into(),
    }
}

#[cfg(test)]
mod display_tests {
    use super::display_name;

    #[test]
    fn names_with_terminal_escapes_are_shown_escaped() {
        assert_eq!(display_name("notes.txt"), "notes.txt");
        let hostile = "x\u{1b}]0;owned\u{7}\u{1b}[2J";
        let shown = display_name(hostile);
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown}"
        );
        assert!(shown.contains("\\u{1b}"), "{shown}");
        assert_eq!(super::printable("exit 3: no space"), "exit 3: no space");
        assert!(!super::printable("a\u{1b}[2Jb").contains('\u{1b}'));
    }
}
