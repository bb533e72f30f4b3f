//! loopcast-proto: the sans-IO core of loopcast.
//!
//! Wire format, archive frame format, manifest, sender carousel and receiver state
//! machine. Nothing here opens a socket, reads a clock or draws randomness: time,
//! salts and datagrams are passed in, datagrams and storage instructions come out.
//! `PROTOCOL.md` beside this crate is the normative specification.

#![warn(missing_docs)]

pub mod archive;
pub mod cell;
pub mod client;
pub mod codec;
pub mod cookie;
pub mod director;
pub mod fec;
pub mod frames;
pub mod jobs;
pub mod keys;
pub mod manifest;
pub mod pacer;
pub mod rate;
pub mod received;
pub mod receiver;
pub mod sender;
pub mod server;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod timers;
pub mod wire;

pub use cookie::CookieJar;
pub use frames::FrameTracker;
pub use keys::{FileKey, MasterKey};
pub use manifest::Manifest;
pub use rate::{AdaptMode, ChannelSelector, RateController, ReportTimer, UnicastRate};
pub use received::ReceivedMap;
pub use receiver::{FileReceiver, NakMode, Outcome, ReceiverStats, ResumePoint};
pub use sender::{Announcer, Carousel, CarouselStats, PayloadSource, RepairConfig, Transmit};
