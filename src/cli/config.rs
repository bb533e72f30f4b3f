//! Raw arguments turned into validated configurations ("high args"): every check
//! that can fail before anything runs, with a clear reason.

use super::args::{
    AgentArgs, ApiArgs, DEFAULT_DIRECTOR_HTTP_PORT, DEFAULT_DIRECTOR_PORT, PushArgs, RecvArgs,
    RelayArgs, Repair, ServeArgs, resolve_server,
};
use crate::agent::AgentConfig;
use crate::archive_file::{self, PackOptions};
use crate::error::{Error, Result};
use crate::push::PushConfig;
use crate::recv::RecvConfig;
use crate::relay::RelayConfig;
use crate::server::ServeConfig;
use crate::units::format_rate;
use crate::{keyfile, net};
use loopcast_proto::client::RepairKind;
use loopcast_proto::wire;
use std::net::SocketAddr;
use std::time::Duration;

/// `serve`'s arguments, checked: rates, adaptive bounds, the key, the interface.
pub(super) fn serve(a: ServeArgs) -> Result<ServeConfig> {
    let rates = if a.rates.is_empty() {
        vec![a.rate]
    } else {
        a.rates.clone()
    };
    if rates.len() > wire::MAX_CHANNELS {
        return Err(Error::new(format!(
            "--rates lists {} rates; at most {} channels per file",
            rates.len(),
            wire::MAX_CHANNELS
        )));
    }
    let fastest = rates.iter().copied().max().unwrap_or(a.rate);
    let adapt = a
        .adapt
        .map(|mode| (mode, a.min_rate, a.max_rate.unwrap_or(fastest)));
    if let Some((_, min, max)) = adapt
        && min > max
    {
        return Err(Error::new(format!(
            "--min-rate {} is above --max-rate {}",
            format_rate(min as f64),
            format_rate(max as f64)
        )));
    }
    let directors = directors(&a.director)?;
    let group = a.net.group_or_default(&directors);
    one_family(
        std::iter::once(("--group", group)).chain(directors.iter().map(|&d| ("--director", d))),
    )?;
    Ok(ServeConfig {
        key: keyfile::load(&a.key)?,
        interface: net::resolve_interface(a.net.interface.as_deref())?,
        group,
        rates,
        adapt,
        packet_size: a.packet_size.into(),
        ttl: a.ttl,
        repair_share: a.repair_share,
        fec_overhead: a.fec_overhead / 100.0,
        cache_dir: a.cache_dir.unwrap_or_else(archive_file::default_cache_dir),
        // Plain files are packed with cells that fit this server's packets.
        pack: PackOptions {
            cell_size: wire::cell_size_for_packet(a.packet_size.into()),
            ..(&a.pack).into()
        },
        gso: !a.no_gso,
        unicast_port: a.unicast_port.unwrap_or(group.port()),
        unicast_max_rate: a.unicast_max_rate,
        unicast_max_clients: a.unicast_max_clients,
        directors,
        capacity: a.capacity.unwrap_or(0),
        on_demand: a.on_demand,
        idle: Duration::from_secs(a.idle),
        json: a.json,
        paths: a.paths,
    })
}

/// `relay`'s arguments: `recv`'s, and a server of the kept archives on the
/// relay's own group (one channel per file, defaults as `serve`'s).
pub(super) fn relay(a: RelayArgs) -> Result<RelayConfig> {
    if a.recv.names.is_empty() {
        return Err(usage(
            "relay needs the names of the files to relay".to_string(),
        ));
    }
    let recv = recv(a.recv)?;
    let serve = ServeConfig {
        paths: Vec::new(),
        key: recv.key.clone(),
        interface: net::resolve_interface(a.relay_interface.as_deref())?,
        group: a.relay_group,
        rates: vec![a.relay_rate],
        adapt: None,
        packet_size: a.relay_packet_size.into(),
        ttl: net::DEFAULT_TTL,
        repair_share: loopcast_proto::sender::DEFAULT_REPAIR_SHARE,
        fec_overhead: 0.0,
        cache_dir: archive_file::default_cache_dir(),
        pack: PackOptions::default(),
        gso: true,
        unicast_port: a.relay_group.port(),
        unicast_max_rate: 100_000_000,
        unicast_max_clients: 16,
        directors: Vec::new(),
        capacity: 0,
        on_demand: false,
        idle: Duration::from_secs(10),
        json: false,
    };
    Ok(RelayConfig { recv, serve })
}

/// `recv`'s arguments, checked: the key, the interface, the server address.
pub(super) fn recv(mut a: RecvArgs) -> Result<RecvConfig> {
    if !a.director.is_empty() && a.names.is_empty() {
        return Err(usage(
            "--director needs the names of the files to look up".to_string(),
        ));
    }
    // NAME@ARCHIVE takes only that archive of the name (as an agent's job does).
    let mut pinned = std::collections::BTreeMap::new();
    for name in a.names.iter_mut() {
        if let Some((plain, id)) = split_archive(name) {
            pinned.insert(plain.clone(), id);
            *name = plain;
        }
        loopcast_proto::manifest::check_name(name)
            .map_err(|why| usage(format!("{name:?} cannot be a file name: {why}")))?;
    }
    let server = a
        .server
        .as_deref()
        .map(|s| resolve_server("--server", s, a.net.group_port()))
        .transpose()?;
    let directors = directors(&a.director)?;
    let others: Vec<SocketAddr> = server.iter().chain(&directors).copied().collect();
    let group = a.net.group_or_default(&others);
    one_family(
        (server.iter().map(|&s| ("--server", s)))
            .chain(directors.iter().map(|&d| ("--director", d)))
            .chain((!a.unicast).then_some(("--group", group))),
    )?;
    Ok(RecvConfig {
        key: keyfile::load(&a.key)?,
        interface: net::resolve_interface(a.net.interface.as_deref())?,
        group,
        server,
        out_dir: a.out,
        no_clobber: a.no_clobber,
        keep_archive: a.keep_archive,
        relay_news: None,
        names: a.names,
        pinned,
        timeout: a.timeout.map(Duration::from_secs),
        debug_drop: a.debug_drop / 100.0,
        debug_seed: a.debug_seed,
        debug_frame_delay: Duration::from_millis(a.debug_frame_delay),
        gro: !a.no_gro,
        repair: match a.repair {
            Repair::Auto => RepairKind::Auto,
            Repair::Parity => RepairKind::Parity,
            Repair::Copies => RepairKind::Copies,
        },
        max_rate: a.max_rate,
        aggregate: a.aggregate,
        sync_timeout: Duration::from_secs_f64(a.sync_timeout),
        unicast_only: a.unicast,
        directors,
        json: a.json,
    })
}

/// Resolves `--director HOST[:PORT],…` (default port `DEFAULT_DIRECTOR_PORT`).
pub(super) fn directors(list: &[String]) -> Result<Vec<SocketAddr>> {
    let resolved: Vec<SocketAddr> = list
        .iter()
        .map(|d| resolve_server("--director", d, DEFAULT_DIRECTOR_PORT))
        .collect::<Result<_>>()?;
    for d in resolved
        .iter()
        .filter(|d| d.port() == DEFAULT_DIRECTOR_HTTP_PORT)
    {
        log::warn!(
            "--director {d}: {DEFAULT_DIRECTOR_HTTP_PORT} is the port of a director's HTTP API; \
             directors take heartbeats, look-ups and agents on UDP port {DEFAULT_DIRECTOR_PORT} unless started with another --listen"
        );
    }
    Ok(resolved)
}

/// Checks that a command's addresses are all IPv4 or all IPv6: its sockets are
/// of one family. The first address given decides.
fn one_family<'a>(addresses: impl IntoIterator<Item = (&'a str, SocketAddr)>) -> Result<()> {
    let mut addresses = addresses.into_iter();
    let Some((first_flag, first)) = addresses.next() else {
        return Ok(());
    };
    let family = |a: SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
    match addresses.find(|(_, a)| a.is_ipv4() != first.is_ipv4()) {
        None => Ok(()),
        Some((flag, other)) => Err(usage(format!(
            "{flag} {other} is {} but {first_flag} {first} is {}: use addresses of one family",
            family(other),
            family(first)
        ))),
    }
}

/// A usage error: exit code 2, as clap's own.
fn usage(message: String) -> Error {
    Error::with_code(message, 2)
}

/// `agent`'s arguments, checked: the node name, the key, the directors.
pub(super) fn agent(a: AgentArgs) -> Result<AgentConfig> {
    let node = match a.node {
        Some(node) => node,
        None => host_name()?,
    };
    if !wire::valid_node_name(&node) {
        return Err(usage(format!(
            "node name {node:?}: use --node NAME with 1 to 64 letters, digits, '.', '-' or '_'"
        )));
    }
    let directors = directors(&a.director)?;
    one_family(directors.iter().map(|&d| ("--director", d)))?;
    Ok(AgentConfig {
        key: keyfile::load(&a.key)?,
        key_path: a.key,
        node,
        local: match directors.first() {
            Some(&d) => net::resolve_interface(a.interface.as_deref())?.local(d, 0)?,
            None => return Err(usage("agent needs --director".to_string())),
        },
        directors,
        out_dir: a.out,
        on_complete: a.on_complete,
        interface: a.interface,
        json: a.json,
        keep_partial: a.keep_partial,
        keep_archive: a.keep_archive,
    })
}

fn host_name() -> Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(usage("cannot read the host name; give --node NAME".into()));
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// `NAME@ARCHIVE` (16 hex digits) as the name and the archive id.
pub(super) fn split_archive(text: &str) -> Option<(String, u64)> {
    let (name, id) = text.rsplit_once('@')?;
    let id = (id.len() == 16).then(|| u64::from_str_radix(id, 16).ok())??;
    (!name.is_empty() && id != 0).then(|| (name.to_owned(), id))
}

/// `push`'s arguments, checked: targets (a list or @FILE), names, repeats.
pub(super) fn push(mut a: PushArgs) -> Result<PushConfig> {
    // Files of this host are served by the push, under their own names; a
    // name on air may be pinned to one of its archives as NAME@ARCHIVE.
    let mut serve = Vec::new();
    let mut archives = vec![0; a.files.len()];
    for (file, archive) in a.files.iter_mut().zip(archives.iter_mut()) {
        let local = std::path::Path::new(file.as_str());
        if !local.is_file() {
            if let Some((name, id)) = split_archive(file) {
                (*file, *archive) = (name, id);
            }
            continue;
        }
        let name = (local.file_name())
            .and_then(|n| n.to_str())
            .ok_or_else(|| usage(format!("{file:?}: not a file name loopcast can serve")))?
            .to_owned();
        serve.push(local.to_path_buf());
        *file = name;
    }
    if a.detach && !serve.is_empty() {
        return Err(usage(
            "--detach cannot push files of this host: their server lives as long as the push"
                .into(),
        ));
    }
    let targets: Vec<String> = match a.to.strip_prefix('@') {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("--to @{path}: cannot read: {e}")))?;
            text.lines()
                .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
                .filter(|l| !l.is_empty())
                .collect()
        }
        None => a.to.split(',').map(|n| n.trim().to_owned()).collect(),
    };
    let spec = loopcast_proto::jobs::JobSpec {
        files: a.files.clone(),
        targets: targets.clone(),
        deadline_ms: a.deadline.as_millis().min(u64::MAX as u128) as u64,
        max_rate_bps: a.rate.unwrap_or(0),
        request_id: 0,
        archives: archives.clone(),
    };
    if let Err(e) = loopcast_proto::jobs::check_spec(&spec) {
        return Err(usage(e.to_string()));
    }
    Ok(PushConfig {
        key: keyfile::load(&a.key)?.jobs_api_mac_key(),
        directors: apis(&a.director, &a.api)?,
        files: a.files,
        archives,
        targets,
        deadline: a.deadline,
        max_rate_bps: a.rate.unwrap_or(0),
        detach: a.detach,
        json: a.json,
        serve,
        key_path: a.key,
        interface: a.interface,
        group: a.group,
    })
}

/// The directors' HTTP APIs: `--api HOST:PORT,…` if given, else each
/// `--director`'s host on the port after its UDP port (as `director --http`
/// defaults to). A `--director` given with the API's default port is taken as
/// the API, with a warning: nothing else listens there by default.
pub(super) fn apis(directors: &[String], api: &ApiArgs) -> Result<Vec<SocketAddr>> {
    if !api.api.is_empty() {
        return (api.api.iter())
            .map(|a| resolve_server("--api", a, DEFAULT_DIRECTOR_HTTP_PORT))
            .collect();
    }
    (directors.iter())
        .map(|d| {
            let udp = resolve_server("--director", d, DEFAULT_DIRECTOR_PORT)?;
            if udp.port() == DEFAULT_DIRECTOR_HTTP_PORT {
                log::warn!(
                    "--director {d}: taking port {DEFAULT_DIRECTOR_HTTP_PORT} as the director's HTTP API; \
                     --director names a director by its UDP port ({DEFAULT_DIRECTOR_PORT} by default), --api its HTTP API"
                );
                return Ok(udp);
            }
            Ok(SocketAddr::new(udp.ip(), api_port(udp.port())))
        })
        .collect()
}

/// The port of a director's HTTP API by default: the one after its UDP port.
pub(super) fn api_port(udp: u16) -> u16 {
    udp.wrapping_add(1).max(1)
}
