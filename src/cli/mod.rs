//! Command-line interface: raw arguments (`args`), validated into configurations
//! (`config`), then the command runs.

mod args;
mod config;
mod values;

use crate::archive_file::{self, ArchiveFile};
use crate::error::{Context, Error, Result};
use crate::units::{display_name, format_bytes, format_rate};
use crate::{agent, director, keyfile, net, push, recv, server};
use args::{Cli, Command, NetArgs};
use clap::Parser;
use loopcast_proto::keys::hex;
use loopcast_proto::wire;
use std::path::PathBuf;
use std::time::Duration;

pub use args::DEFAULT_GROUP;

/// Parses arguments, runs the command, and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .target(env_logger::Target::Pipe(Box::new(
            crate::progress::LogWriter,
        )))
        .init();
    match run(cli) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("loopcast: error: {e}");
            e.code
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { output } => {
            let key = keyfile::generate(&output)?;
            println!(
                "wrote {} (fingerprint {})",
                output.display(),
                loopcast_proto::keys::hex(&key.fingerprint())
            );
            Ok(())
        }
        Command::Pack {
            input,
            key,
            output,
            pack,
            packet_size,
        } => {
            let key = keyfile::load(&key)?;
            let options = archive_file::PackOptions {
                cell_size: wire::cell_size_for_packet(packet_size.into()),
                ..(&pack).into()
            };
            let m = archive_file::pack_file(&input, &output, &key, options)?;
            println!(
                "{}: {} -> {} in {} frames of {}-byte cells",
                output.display(),
                format_bytes(m.original_size),
                format_bytes(m.body_len),
                m.frame_count,
                m.cell_size
            );
            Ok(())
        }
        Command::Unpack { archive, key, out } => {
            let key = keyfile::load(&key)?;
            let a = ArchiveFile::open(&archive, &key)?;
            std::fs::create_dir_all(&out).context(|| format!("cannot create {}", out.display()))?;
            let path = crate::storage::deliver(
                a.file(),
                a.body_start(),
                &a.manifest,
                &key,
                &out,
                &crate::storage::OutputDir::replacing(&out),
            )
            .map_err(|e| match e {
                crate::storage::UnpackFailure::Io(e) => e,
                other => Error::new(format!("{} is damaged: {other}", archive.display())),
            })?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Serve(a) => server::serve(config::serve(a)?),
        Command::Recv(a) => recv::recv(config::recv(a)?),
        Command::Relay(a) => crate::relay::run(config::relay(a)?),
        Command::Director {
            key,
            listen,
            json,
            http,
            state,
            etcd,
            etcd_prefix,
            etcd_ca,
            etcd_cert,
            etcd_key,
            etcd_user,
            etcd_password_file,
        } => director::run(director::DirectorConfig {
            key: keyfile::load(&key)?,
            listen,
            json,
            http: match http {
                Some(http) => http.0,
                None => Some(std::net::SocketAddr::new(
                    listen.ip(),
                    config::api_port(listen.port()),
                )),
            },
            state: match etcd.is_empty() {
                true => state.or_else(|| std::env::var_os("STATE_DIRECTORY").map(PathBuf::from)),
                false => None,
            },
            etcd: director::EtcdAccess {
                endpoints: etcd,
                ca: etcd_ca,
                cert: etcd_cert.zip(etcd_key),
                user: etcd_user.zip(etcd_password_file),
            },
            etcd_prefix,
        }),
        Command::Agent(a) => agent::run(config::agent(a)?),
        Command::Push(a) => push::push(config::push(a)?),
        Command::Jobs(a) => {
            let directors = config::apis(&a.director, &a.api)?;
            let key = (a.key.as_deref())
                .map(|k| keyfile::load(k).map(|k| k.jobs_api_mac_key()))
                .transpose()?;
            push::jobs(&directors, a.id, key, a.cancel, a.json)
        }
        Command::Ls {
            director: Some(director),
            api,
            key,
            ..
        } => {
            let key = (key.as_deref())
                .map(|k| keyfile::load(k).map(|k| k.jobs_api_mac_key()))
                .transpose()?;
            ls_director(config::apis(&[director], &api)?[0], key.as_ref())
        }
        Command::Ls {
            net: n,
            key,
            timeout,
            director: None,
            ..
        } => ls(n, key, timeout),
    }
}

/// `ls`: what is on air, one line per file.
fn ls(n: NetArgs, key: Option<PathBuf>, timeout: u64) -> Result<()> {
    let key = key.map(|k| keyfile::load(&k)).transpose()?;
    let group = n.group_or_default(&[]);
    let listing = recv::list_on_air(
        net::resolve_interface(n.interface.as_deref())?,
        group,
        Duration::from_secs(timeout),
        key.as_ref().map(|k| k.directory_mac_key()).as_ref(),
    )?;
    if listing.unverified > 0 {
        log::warn!(
            "ignored {} listing(s) that do not verify with the key (forged, or another key's)",
            listing.unverified
        );
    }
    if listing.entries.is_empty() {
        return Err(Error::timeout(format!(
            "no server heard on {group} within {timeout} s"
        )));
    }
    if key.is_none() {
        log::warn!("without --key these listings are unverified: anyone on the LAN can forge one");
    }
    println!(
        "{:<32} {:>12}  {:<8}  SESSION   KEY       CHANNELS",
        "NAME", "SIZE", "STATE"
    );
    for (session, fingerprint, e) in listing.entries {
        let channels: Vec<String> = e
            .channels
            .iter()
            .map(|c| format!("{} ({})", c.group, format_rate(c.rate_bps as f64)))
            .collect();
        println!(
            "{:<32} {:>12}  {:<8}  {session:08x}  {}  {}",
            display_name(&e.name),
            format_bytes(e.original_size),
            if e.idle() { "on-demand" } else { "on air" },
            &hex(&fingerprint)[..8],
            channels.join(", ")
        );
    }
    Ok(())
}

/// `ls --director`: every file the director's servers carry, from its HTTP API
/// at `at` (its answer verified with `key`, when given).
fn ls_director(at: std::net::SocketAddr, key: Option<&loopcast_proto::wire::MacKey>) -> Result<()> {
    if key.is_none() {
        log::warn!(
            "without --key the director's answer is not verified: anyone on the path can change it"
        );
    }
    let (_, files) = push::get_listing(at, "/v1/files", "name", key)?;
    let files = files.as_array().cloned().unwrap_or_default();
    if files.is_empty() {
        return Err(Error::timeout(format!(
            "the director at {at} knows no file on air"
        )));
    }
    println!(
        "{:<32} {:>12}  {:<16}  SERVERS (load)",
        "NAME", "SIZE", "ARCHIVE"
    );
    for file in &files {
        let name = file["name"].as_str().unwrap_or("?");
        for version in file["versions"].as_array().into_iter().flatten() {
            let servers: Vec<String> = (version["servers"].as_array().into_iter().flatten())
                .map(|s| {
                    let load = s["load"].as_f64().unwrap_or(0.0) * 100.0;
                    format!("{} ({load:.0}%)", s["address"].as_str().unwrap_or("?"))
                })
                .collect();
            println!(
                "{:<32} {:>12}  {:<16}  {}",
                display_name(name),
                format_bytes(version["size"].as_u64().unwrap_or(0)),
                version["archive_id"].as_str().unwrap_or("?"),
                servers.join(", ")
            );
        }
    }
    Ok(())
}
