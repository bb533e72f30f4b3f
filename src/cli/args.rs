//! The raw arguments ("low args"): clap definitions and value parsers.
//! Over 600 lines on purpose: every flag of every command, with its `--help`
//! text, in one place.

pub(crate) use super::values::resolve_server;
use super::values::{
    HttpListen, parse_adapt, parse_http, parse_percent, parse_seconds, parse_share,
};
use crate::archive_file::PackOptions;
use crate::net;
use crate::units::{DEFAULT_GROUP_PORT, parse_duration, parse_group, parse_rate};
use clap::{Args, Parser, Subcommand};
use loopcast_proto::{AdaptMode, wire};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default directory group.
pub const DEFAULT_GROUP: &str = "239.255.77.1:7700";
/// Default directory group where a command's other addresses are IPv6.
pub const DEFAULT_GROUP_V6: &str = "[ff15::77:1]:7700";
pub use crate::units::DEFAULT_DIRECTOR_PORT;
/// Default port of a director's HTTP API (`director --http`'s default says it too).
pub const DEFAULT_DIRECTOR_HTTP_PORT: u16 = 7791;

/// loopcast: push the same files to many machines over UDP multicast.
///
/// A server loops ("carousels") each file, compressed and encrypted, on its own
/// multicast channel. Receivers may join at any time, store packets straight to
/// disk, and finish when every packet has arrived and verified. Logs go to stderr;
/// RUST_LOG=debug adds, once a second, what each file and channel took, asked
/// and repaired. The key and the directors may come from LOOPCAST_KEY and
/// LOOPCAST_DIRECTOR.
///
/// Exit status: 0 done; 1 an error, with a one-line reason on stderr (wrong key,
/// unwritable directory, full disk, unsafe file name); 2 bad arguments; 3 a
/// time-out (recv --timeout, ls finding no server); 4 a director says no live
/// server carries a wanted file (recv --director), refuses a job for a file or
/// node it does not know (push), or knows no such job (jobs ID); 5 a pushed job
/// ended with nodes not done (deadline, failure, cancel); 6 the output directory
/// has no room for a wanted file (recv, after taking the files that fit); 130
/// interrupted by SIGINT (143 by SIGTERM). A receiver stopped in any way keeps
/// its progress: run the same command again to resume.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
    /// Write a new random master key (file mode 0600; never overwrites).
    Keygen {
        /// Key file to create.
        #[arg(short, long, visible_alias = "out")]
        output: PathBuf,
    },
    /// Pack a file into an archive: compressed, encrypted frames plus a signed manifest.
    Pack {
        /// File to pack.
        input: PathBuf,
        /// Master key file (from `loopcast keygen`).
        #[arg(short, long, env = "LOOPCAST_KEY", value_name = "FILE")]
        key: PathBuf,
        /// Archive to write.
        #[arg(short, long, visible_alias = "out")]
        output: PathBuf,
        #[command(flatten)]
        pack: PackArgs,
        /// IP packet size the archive's cells are cut for (576 to 9000): one
        /// cell fills the payload of an IPv6 packet of this size. A server sends
        /// as many whole cells per packet as its own --packet-size holds, and
        /// refuses packets too small for one. 9000 makes jumbo cells.
        #[arg(long, default_value_t = wire::DEFAULT_PACKET_SIZE as u16,
              value_parser = clap::value_parser!(u16).range(wire::MIN_PACKET_SIZE as i64..=wire::MAX_PACKET_SIZE as i64))]
        packet_size: u16,
    },
    /// Unpack and verify an archive into a directory (the receiver's last step, offline).
    Unpack {
        /// Archive to unpack.
        archive: PathBuf,
        /// Master key file.
        #[arg(short, long, env = "LOOPCAST_KEY", value_name = "FILE")]
        key: PathBuf,
        /// Directory to write the file into.
        #[arg(short, long = "output", visible_alias = "out")]
        out: PathBuf,
    },
    /// Loop files on multicast until interrupted (SIGINT/SIGTERM).
    Serve(ServeArgs),
    /// Receive files from a server, verify them and write them into a directory.
    Recv(RecvArgs),
    /// Receive files as `recv` does (keeping their archives as they came, in
    /// --output) and serve them into this relay's own segment as they arrive:
    /// each packet goes on the relay's loop as soon as its cells verify, so
    /// its receivers need not wait for the relay to finish (until SIGINT/SIGTERM).
    Relay(RelayArgs),
    /// Keep a live map of servers and their files from their heartbeats, and
    /// answer receivers' look-ups with the best servers for a file (until
    /// SIGINT/SIGTERM). Run several for redundancy: servers heartbeat to each.
    Director {
        /// Master key file of the site (heartbeats and look-ups are tagged with it).
        #[arg(short, long, env = "LOOPCAST_KEY", value_name = "FILE")]
        key: PathBuf,
        /// Address and UDP port to listen on ([fd00::9]:7790 for IPv6; servers and
        /// receivers then reach it over IPv6).
        #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:7790")]
        listen: SocketAddr,
        /// Print events (server up or down, look-ups answered, receivers redirected) as
        /// JSON lines on stdout.
        #[arg(long)]
        json: bool,
        /// Where to serve the HTTP API (/v1/servers, /v1/files, /v1/receivers,
        /// /v1/jobs, /metrics for Prometheus), or "off". Default: the --listen
        /// address with the next port (7791), where `ls`, `push` and `jobs` look
        /// for it. It shows server addresses, files, loads and receivers'
        /// addresses to whoever can reach it.
        #[arg(long, value_name = "ADDR:PORT|off", value_parser = parse_http)]
        http: Option<HttpListen>,
        /// Directory where jobs are kept (jobs.redb), so that they survive a
        /// restart. Default: $STATE_DIRECTORY (systemd's StateDirectory=), else
        /// none: jobs are kept in memory only.
        #[arg(long, value_name = "DIR", conflicts_with = "etcd")]
        state: Option<PathBuf>,
        /// Keep jobs on etcd instead, shared by several directors: each
        /// campaigns, one is elected to schedule jobs, the others follow and
        /// take over within about 3 s when it dies (URL,URL,…).
        #[arg(long, value_name = "URL,...", value_delimiter = ',')]
        etcd: Vec<String>,
        /// Prefix of this site's keys on etcd.
        #[arg(
            long,
            value_name = "PREFIX",
            default_value = "/loopcast",
            requires = "etcd"
        )]
        etcd_prefix: String,
        /// PEM certificate(s) of the CA that signed etcd's, for https://
        /// endpoints (default: the web's public roots).
        #[arg(long, value_name = "FILE", requires = "etcd")]
        etcd_ca: Option<PathBuf>,
        /// PEM client certificate (chain) to show etcd (with --etcd-key), for
        /// an etcd started with --client-cert-auth.
        #[arg(long, value_name = "FILE", requires_all = ["etcd", "etcd_key"])]
        etcd_cert: Option<PathBuf>,
        /// PEM private key of --etcd-cert (mode 0600).
        #[arg(long, value_name = "FILE", requires = "etcd_cert")]
        etcd_key: Option<PathBuf>,
        /// etcd user, for an etcd with authentication enabled (with
        /// --etcd-password-file).
        #[arg(long, value_name = "NAME", requires_all = ["etcd", "etcd_password_file"])]
        etcd_user: Option<String>,
        /// File holding the etcd user's password (mode 0600; one line).
        #[arg(long, value_name = "FILE", requires = "etcd_user")]
        etcd_password_file: Option<PathBuf>,
    },
    /// Run on each node: register with the directors and receive the files of
    /// the jobs they give this node (until SIGINT/SIGTERM). Jobs survive a
    /// restart: unfinished ones resume, finished ones are not fetched again.
    Agent(AgentArgs),
    /// Push files on air to a list of nodes (running `agent`) and follow them
    /// until every node has them: exit 0 when all are done, 5 with the nodes
    /// missing when the job ends otherwise (deadline, failure, cancel).
    Push(PushArgs),
    /// List a director's jobs, show one with its nodes, or cancel one.
    Jobs(JobsArgs),
    /// List the files on air and exit.
    Ls {
        #[command(flatten)]
        net: NetArgs,
        /// Master key file: list only servers whose listings verify with it. Without
        /// it every listing heard is shown, marked unverified: anyone on the LAN can
        /// forge one.
        #[arg(short, long, env = "LOOPCAST_KEY", value_name = "FILE")]
        key: Option<PathBuf>,
        /// Seconds to listen before giving up.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
        /// List the files every server known to this director carries, with where
        /// each one is and how loaded, from its HTTP API.
        #[arg(long, env = "LOOPCAST_DIRECTOR", value_name = "HOST[:PORT]")]
        director: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Args, Debug)]
pub(super) struct NetArgs {
    /// Interface to use: a name (eth0) or one of this host's IPv4 or IPv6
    /// addresses. IPv6 groups are joined on it; link-local servers need it.
    /// Default: the kernel's choice by its routing table.
    #[arg(short, long, value_name = "IF")]
    pub(super) interface: Option<String>,
    /// Directory group where servers announce their files: IPv4 (239.255.77.1:7700)
    /// or IPv6 in brackets ([ff15::77]:7700); without a port, port 7700. --server and --director must be of
    /// the same family. Default: 239.255.77.1:7700, or [ff15::77:1]:7700 when
    /// --server or --director is IPv6.
    #[arg(short, long, value_name = "G:P", value_parser = parse_group)]
    pub(super) group: Option<SocketAddr>,
}

impl NetArgs {
    /// The group given, or the default of the family of `others` (a command's
    /// --server or --directors; IPv4 when there are none).
    pub(super) fn group_or_default(&self, others: &[SocketAddr]) -> SocketAddr {
        let v6 = others.first().is_some_and(SocketAddr::is_ipv6);
        let default = if v6 { DEFAULT_GROUP_V6 } else { DEFAULT_GROUP };
        self.group
            .unwrap_or_else(|| default.parse().expect("a valid default group"))
    }

    /// The port of the group given, or of the defaults.
    pub(super) fn group_port(&self) -> u16 {
        self.group.map_or(DEFAULT_GROUP_PORT, |g| g.port())
    }
}

/// Where the directors' HTTP APIs are, when not on their UDP port + 1.
#[derive(Args, Debug)]
pub(super) struct ApiArgs {
    /// The directors' HTTP APIs, one per --director, when a director was
    /// started with an --http of its own. Default: each director's host on
    /// the port after its UDP port (7791 for 7790).
    #[arg(
        long,
        env = "LOOPCAST_API",
        value_name = "HOST:PORT,...",
        value_delimiter = ','
    )]
    pub(super) api: Vec<String>,
}

#[derive(Args, Debug)]
pub(super) struct PackArgs {
    /// Bytes of original data per frame (each frame is verified and unpacked on its own).
    #[arg(long, default_value_t = loopcast_proto::archive::DEFAULT_FRAME_SIZE)]
    pub(super) frame_size: u32,
    /// zstd compression level (1-19).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub(super) level: i32,
}

impl From<&PackArgs> for PackOptions {
    fn from(a: &PackArgs) -> Self {
        PackOptions {
            frame_size: a.frame_size,
            level: a.level,
            ..PackOptions::default()
        }
    }
}

#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    /// Files to serve: plain files (packed into the cache at start) or archives.
    #[arg(required = true)]
    pub(super) paths: Vec<PathBuf>,
    /// Master key file.
    #[arg(short, long, env = "LOOPCAST_KEY", value_name = "FILE")]
    pub(super) key: PathBuf,
    #[command(flatten)]
    pub(super) net: NetArgs,
    /// Rate of each file's channel in bits/s, with K/M/G suffixes (e.g. 100M, 1.5G).
    #[arg(short, long, default_value = "100M", value_parser = parse_rate, conflicts_with = "rates")]
    pub(super) rate: u64,
    /// Loop each file on one channel per rate, each its own multicast group, so that
    /// slow and fast receivers each take what they can (e.g. 20M,100M,500M; at most 8).
    /// Receivers start on the fastest within their --max-rate and step down or up.
    #[arg(long, value_name = "R1,R2,...", value_delimiter = ',', value_parser = parse_rate)]
    pub(super) rates: Vec<u64>,
    /// Let each channel's rate follow its receivers' reports: the slowest receiver's
    /// (min) or their average (avg), within --min-rate and --max-rate.
    #[arg(long, value_name = "min|avg", value_parser = parse_adapt)]
    pub(super) adapt: Option<AdaptMode>,
    /// Lowest rate an adaptive channel slows down to.
    #[arg(long, default_value = "1M", value_parser = parse_rate, requires = "adapt")]
    pub(super) min_rate: u64,
    /// Highest rate an adaptive channel speeds up to. Default: its starting rate.
    #[arg(long, value_parser = parse_rate, requires = "adapt")]
    pub(super) max_rate: Option<u64>,
    /// UDP port for receivers' requests, reports and unicast streams (0: any free
    /// one; listings name it). Default: the directory group's port.
    #[arg(long, value_name = "PORT")]
    pub(super) unicast_port: Option<u16>,
    /// Total rate of all unicast streams (receivers that cannot get multicast), shared
    /// evenly among them; each stream adapts to its receiver's NAKs below its share.
    #[arg(long, default_value = "100M", value_parser = parse_rate)]
    pub(super) unicast_max_rate: u64,
    /// Most unicast streams at once; further requests are refused (logged).
    #[arg(long, default_value_t = 16)]
    pub(super) unicast_max_clients: usize,
    /// Directors to heartbeat to every second (default port 7790), so that receivers
    /// asking them find this server's files.
    #[arg(
        long,
        env = "LOOPCAST_DIRECTOR",
        value_name = "HOST[:PORT],...",
        value_delimiter = ','
    )]
    pub(super) director: Vec<String>,
    /// The most this server should send, bits/s (e.g. 1G): directors rank servers
    /// by their sending rate against it (and by unicast streams against
    /// --unicast-max-clients). Default: rank by streams only.
    #[arg(long, value_parser = parse_rate, requires = "director")]
    pub(super) capacity: Option<u64>,
    /// Start a file's channels only when a receiver asks for it, and stop them when no
    /// receiver has reported for --idle seconds. ANNOUNCE still lists the file.
    #[arg(long)]
    pub(super) on_demand: bool,
    /// Seconds without a report before an on-demand file's channels stop.
    #[arg(
        long,
        default_value_t = 10,
        value_name = "SECS",
        requires = "on_demand"
    )]
    pub(super) idle: u64,
    /// Print events (join, progress, channel change, fallback, rate change, done,
    /// error) as JSON lines on stdout.
    #[arg(long)]
    pub(super) json: bool,
    /// IP packet size in bytes (576 to 9000; 1500 fits standard Ethernet).
    #[arg(long, default_value_t = wire::DEFAULT_PACKET_SIZE as u16,
          value_parser = clap::value_parser!(u16).range(wire::MIN_PACKET_SIZE as i64..=wire::MAX_PACKET_SIZE as i64))]
    pub(super) packet_size: u16,
    /// Multicast TTL (1 keeps traffic on the local segment).
    #[arg(long, default_value_t = net::DEFAULT_TTL)]
    pub(super) ttl: u32,
    /// Largest share of each channel's packets spent repairing what receivers NAK
    /// (0 to 0.9; 0 turns repair off and receivers wait for the next loop).
    #[arg(long, default_value_t = loopcast_proto::sender::DEFAULT_REPAIR_SHARE, value_parser = parse_share)]
    pub(super) repair_share: f64,
    /// Parity sent on every loop after each block of 1024 packets, as a percentage
    /// of it (e.g. 5): receivers that lose up to that much of a block rebuild it
    /// without asking, for lossy segments with no return path. Default 0: parity
    /// only when receivers ask.
    #[arg(long, value_name = "PERCENT", default_value_t = 0.0, value_parser = parse_percent)]
    pub(super) fec_overhead: f64,
    /// Where archives of plain files are kept and reused. Default: ~/.cache/loopcast.
    #[arg(long)]
    pub(super) cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub(super) pack: PackArgs,
    /// Send one datagram per packet instead of UDP GSO batches (for NICs or
    /// drivers that mishandle GSO; costs more CPU per packet).
    #[arg(long)]
    pub(super) no_gso: bool,
}

/// `relay`'s own flags, after `recv`'s.
#[derive(Args, Debug)]
pub(super) struct RelayArgs {
    #[command(flatten)]
    pub(super) recv: RecvArgs,
    /// Directory group this relay serves on, in its own segment (its listings
    /// go there; receivers there use it as their -g). Its port is also the
    /// relay's unicast port.
    #[arg(long, value_name = "G:P", value_parser = parse_group)]
    pub(super) relay_group: SocketAddr,
    /// Interface (name or address) this relay serves on. Default: the kernel's choice.
    #[arg(long, value_name = "IF")]
    pub(super) relay_interface: Option<String>,
    /// Rate of the relay's channel for each file, bits/s with K/M/G.
    #[arg(long, default_value = "100M", value_parser = parse_rate)]
    pub(super) relay_rate: u64,
    /// IP packet size the relay sends (576 to 9000; at least its archives' cells).
    #[arg(long, default_value_t = wire::DEFAULT_PACKET_SIZE as u16,
          value_parser = clap::value_parser!(u16).range(wire::MIN_PACKET_SIZE as i64..=wire::MAX_PACKET_SIZE as i64))]
    pub(super) relay_packet_size: u16,
}

/// `recv --repair`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Repair {
    /// Copies while the server counts at most 4 receivers, parity above.
    Auto,
    /// Parity packets per block (spec §6.5).
    Parity,
    /// Copies of the missing packets.
    Copies,
}

#[derive(Args, Debug)]
pub(super) struct RecvArgs {
    /// Files to receive, by name (NAME@ARCHIVE, with its 16 hex digits, takes
    /// only that archive of the name, as an agent's job does). Default: every
    /// file on air.
    pub(super) names: Vec<String>,
    /// Master key file.
    #[arg(short, long, env = "LOOPCAST_KEY", value_name = "FILE")]
    pub(super) key: PathBuf,
    #[command(flatten)]
    pub(super) net: NetArgs,
    /// Directory to write the received files into (created if missing).
    #[arg(short, long = "output", visible_alias = "out", value_name = "DIR")]
    pub(super) out: PathBuf,
    /// Never replace a file already in the output directory: a wanted file found
    /// there ends the run with an error (exit 1) before anything of it is received.
    /// Default: a verified file replaces an older one atomically (by rename).
    #[arg(long)]
    pub no_clobber: bool,
    /// Also keep each archive as it came, sealed, as DIR/NAME.lcar: the server's
    /// very archive file (`cmp` passes), which `serve` can loop again with the
    /// same archive id. Costs the archive's size on disk besides the file (its
    /// cells are written as they verify, never read back); it is put in place,
    /// 0600, when the file is delivered.
    #[arg(long, value_name = "DIR")]
    pub keep_archive: Option<PathBuf>,
    /// Give up after this many seconds (exit code 3). Default: wait as long as it takes.
    #[arg(long, value_name = "SECS")]
    pub(super) timeout: Option<u64>,
    /// Testing aid for labs: drop this percentage of incoming DATA packets at random,
    /// as if the network lost them, to exercise NAK repair.
    #[arg(long, hide = true, value_name = "PERCENT", default_value_t = 0.0, value_parser = parse_percent)]
    pub(super) debug_drop: f64,
    /// Seed of --debug-drop's random choices, to repeat a lossy run exactly as it
    /// went (the seed used is logged). Default: a random seed.
    #[arg(long, hide = true, value_name = "N", requires = "debug_drop")]
    pub(super) debug_seed: Option<u64>,
    /// Testing aid: the frame worker waits this many milliseconds before opening
    /// each frame, as a slow disk or a busy CPU would make it, to exercise how
    /// the receiver holds back while its frame worker is behind.
    #[arg(long, hide = true, value_name = "MS", default_value_t = 0)]
    pub(super) debug_frame_delay: u64,
    /// Take one datagram per read instead of UDP GRO bundles (costs more CPU per packet).
    #[arg(long)]
    pub(super) no_gro: bool,
    /// How to ask for what the loop passed and this receiver lacks: parity packets
    /// (one repairs a different loss at each receiver, but rebuilding a block costs
    /// the receiver CPU), copies of the missing packets, or auto: copies while the
    /// server counts at most 4 receivers (their losses add up to little), parity
    /// when more share the channel.
    #[arg(long, value_enum, default_value_t = Repair::Auto)]
    pub(super) repair: Repair,
    /// Fastest channel to take, bits/s (e.g. 50M). Default: the fastest on offer.
    /// Also the most a unicast stream may send us.
    #[arg(long, value_parser = parse_rate)]
    pub(super) max_rate: Option<u64>,
    /// Join every channel of a file within --max-rate at once: their loops are out of
    /// phase, so each brings mostly new packets and the file arrives sooner.
    #[arg(long)]
    pub(super) aggregate: bool,
    /// Seconds without data on multicast before asking the server for a unicast stream.
    #[arg(long, default_value_t = 3.0, value_name = "SECS", value_parser = parse_seconds)]
    pub(super) sync_timeout: f64,
    /// The server's unicast address, for hosts that hear no multicast at all (its
    /// listing is asked for after --sync-timeout of silence). Default port: the
    /// directory group's.
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(super) server: Option<String>,
    /// Skip multicast entirely: receive by unicast from --server.
    #[arg(long, requires = "server")]
    pub(super) unicast: bool,
    /// Directors to ask which servers carry the wanted files (default port 7790).
    /// The best server named is taken (its multicast, else a unicast stream); when it
    /// goes silent, or a director moves the file, the next one named is, keeping what
    /// is stored. Exit code 4 when a director says no live server carries a file.
    #[arg(long, env = "LOOPCAST_DIRECTOR", value_name = "HOST[:PORT],...", value_delimiter = ',', conflicts_with_all = ["server", "unicast"])]
    pub(super) director: Vec<String>,
    /// Print events (join, progress, channel change, fallback, done, error) as JSON
    /// lines on stdout.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub(super) struct AgentArgs {
    /// Master key file of the site.
    #[arg(short, long, env = "LOOPCAST_KEY", value_name = "FILE")]
    pub(super) key: PathBuf,
    /// Directors to register with (default port 7790).
    #[arg(
        long,
        env = "LOOPCAST_DIRECTOR",
        required = true,
        value_name = "HOST[:PORT],...",
        value_delimiter = ','
    )]
    pub(super) director: Vec<String>,
    /// Directory to write received files into (created if missing).
    #[arg(short, long = "output", visible_alias = "out", value_name = "DIR")]
    pub(super) out: PathBuf,
    /// This node's name in jobs: 1 to 64 letters, digits, '.', '-', '_'.
    /// Default: the host name.
    #[arg(long, value_name = "NAME")]
    pub(super) node: Option<String>,
    /// Shell command run after each file of a job is delivered and verified,
    /// with LOOPCAST_PATH, LOOPCAST_NAME, LOOPCAST_SIZE, LOOPCAST_BLAKE3 and
    /// LOOPCAST_JOB in its environment. A non-zero exit marks the node failed
    /// in the job (hook_failed).
    #[arg(long, value_name = "CMD")]
    pub(super) on_complete: Option<String>,
    /// Interface to receive on: a name (eth0) or one of this host's IPv4 or IPv6 addresses.
    #[arg(short, long, value_name = "IF")]
    pub(super) interface: Option<String>,
    /// Print events (job start, end, cancel) as JSON lines on stdout.
    #[arg(long)]
    pub(super) json: bool,
    /// Keep what a cancelled or expired job received (in OUT/.loopcast-partial),
    /// so that pushing the same file again resumes it. Default: removed.
    #[arg(long)]
    pub(super) keep_partial: bool,
    /// Also keep each job's archives as they came, sealed, as DIR/NAME.lcar (as
    /// `recv --keep-archive`): the servers' very files, which `serve` can loop.
    #[arg(long, value_name = "DIR")]
    pub(super) keep_archive: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(super) struct PushArgs {
    /// Files to push: names of files on air (as `ls` shows them; NAME@ARCHIVE
    /// pins one of several archives of a name), or files on this host, which
    /// the push serves itself (on demand, heartbeating to the director) until
    /// the job ends. A job is pinned to the archives it was made for.
    #[arg(required = true)]
    pub(super) files: Vec<String>,
    /// Master key file of the site (the request is tagged with it).
    #[arg(short, long, env = "LOOPCAST_KEY", value_name = "FILE")]
    pub(super) key: PathBuf,
    /// Target nodes: NODE,NODE,… or @FILE with one node per line (# comments).
    #[arg(long, required = true, value_name = "NODE,...|@FILE")]
    pub(super) to: String,
    /// The directors (default port 7790; their HTTP API is found on the next
    /// port, or at --api); with several on one etcd, the one scheduling takes
    /// the job and the others show it.
    #[arg(
        long,
        env = "LOOPCAST_DIRECTOR",
        required = true,
        value_name = "HOST[:PORT],...",
        value_delimiter = ','
    )]
    pub(super) director: Vec<String>,
    #[command(flatten)]
    pub(super) api: ApiArgs,
    /// How long the nodes have: 90s, 30m, 2h, 1d.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub(super) deadline: Duration,
    /// Fastest channel the nodes take, bits/s (e.g. 200M), and the rate files
    /// of this host are served at. Default: the fastest on offer (and serve's 100M).
    #[arg(long, value_parser = parse_rate)]
    pub(super) rate: Option<u64>,
    /// Create the job, print its id and exit without following it (not with
    /// files of this host: their server lives as long as the push).
    #[arg(long)]
    pub(super) detach: bool,
    /// For files of this host: the interface to serve on (a name or an IPv4 or IPv6 address).
    #[arg(short, long, value_name = "IF")]
    pub(super) interface: Option<String>,
    /// For files of this host: the directory group to serve on.
    #[arg(short, long, value_name = "G:P", value_parser = parse_group)]
    pub(super) group: Option<SocketAddr>,
    /// Print events (job created, node progress, job end) as JSON lines on stdout.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub(super) struct JobsArgs {
    /// A job to show (default: list every job).
    pub(super) id: Option<u64>,
    /// The directors (default port 7790; their HTTP API is found on the next
    /// port, or at --api): the first that answers.
    #[arg(
        long,
        env = "LOOPCAST_DIRECTOR",
        required = true,
        value_name = "HOST[:PORT],...",
        value_delimiter = ','
    )]
    pub(super) director: Vec<String>,
    #[command(flatten)]
    pub(super) api: ApiArgs,
    /// Cancel job ID: its nodes stop and it ends as cancelled (needs --key).
    #[arg(long, requires_all = ["id", "key"])]
    pub(super) cancel: bool,
    /// Master key file of the site: the director's answers are taken only if
    /// they verify with it (needed for --cancel).
    #[arg(short, long, env = "LOOPCAST_KEY", value_name = "FILE")]
    pub(super) key: Option<PathBuf>,
    /// Print the director's JSON.
    #[arg(long)]
    pub(super) json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_group_follows_the_family_of_the_servers_and_directors_given() {
        let net = NetArgs {
            interface: None,
            group: None,
        };
        let v4: SocketAddr = DEFAULT_GROUP.parse().unwrap();
        let v6: SocketAddr = DEFAULT_GROUP_V6.parse().unwrap();
        assert_eq!(net.group_or_default(&[]), v4);
        assert_eq!(
            net.group_or_default(&["10.0.0.9:7790".parse().unwrap()]),
            v4
        );
        assert_eq!(
            net.group_or_default(&["[fd00::9]:7790".parse().unwrap()]),
            v6
        );
        assert_eq!(v6.port(), net.group_port());
        let given: SocketAddr = "239.1.2.3:7000".parse().unwrap();
        let net = NetArgs {
            interface: None,
            group: Some(given),
        };
        assert_eq!(
            net.group_or_default(&["[fd00::9]:7790".parse().unwrap()]),
            given
        );
        assert_eq!(net.group_port(), 7000);
    }
}
