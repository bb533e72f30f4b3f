//! loopcast: reliable multicast looping file broadcaster.
//!
//! This crate is the I/O driver around the sans-IO `loopcast-proto`: sockets and
//! multicast joins, the event loop, timers and pacing, file storage, and the CLI.

#![warn(missing_docs)]

pub mod agent;
pub mod archive_file;
pub mod cli;
pub mod datapath;
pub mod director;
pub mod error;
pub mod events;
pub mod keyfile;
pub mod net;
pub mod progress;
pub mod push;
pub mod recv;
pub mod relay;
pub mod server;
pub mod signals;
pub mod storage;
pub mod units;
pub mod waiting;
