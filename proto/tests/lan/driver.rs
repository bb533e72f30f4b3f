//! The virtual LAN's in-memory driver: what `recv` does with sockets and files.

use super::Lan;
use loopcast_proto::archive::{Cells, Unpacker};
use loopcast_proto::client::Command;
use loopcast_proto::fec::FecError;
use std::collections::HashSet;
use std::net::SocketAddr;

impl Lan {
    /// The in-memory driver: what `recv` does with sockets and files.
    pub fn carry_out(&mut self, i: usize, command: Command) {
        let now = self.now;
        let key = self.key.clone();
        let node = &mut self.nodes[i];
        match command {
            Command::Join {
                reception,
                channel,
                info,
            } => {
                node.joined.insert((reception, channel), info);
            }
            Command::Leave { reception, channel } => {
                node.joined.remove(&(reception, channel));
            }
            Command::OpenStream { reception, server } => {
                assert!(self.servers.iter().any(|s| s.addr == server), "{server}");
                let local = SocketAddr::new(node.link.ip(), 41000 + reception as u16);
                node.streams.insert(reception, local);
            }
            Command::CloseStream { reception } => {
                node.streams.remove(&reception);
            }
            Command::OpenStorage {
                reception,
                manifest,
            } => {
                let disk = node.disk.entry(manifest.name.clone()).or_default();
                let resumed = match &disk.map {
                    Some((map, point)) if map.len() == manifest.packet_count() => {
                        Some((map.clone(), Some(point.clone())))
                    }
                    _ => {
                        disk.body = vec![0; manifest.body_len as usize];
                        None
                    }
                };
                node.storage
                    .insert(reception, (*manifest, None, HashSet::new()));
                node.session.storage_opened(reception, resumed);
            }
            Command::CloseStorage {
                reception,
                map,
                resume,
            } => {
                if let Some((manifest, ..)) = node.storage.remove(&reception) {
                    node.disk.get_mut(&manifest.name).unwrap().map = Some((map, resume));
                }
            }
            Command::CheckTable { reception } => {
                let (manifest, unpacker, _) = node.storage.get_mut(&reception).unwrap();
                let body = &node.disk[&manifest.name].body;
                let mut table = body[..manifest.table_len() as usize].to_vec();
                let checked = Unpacker::new(&key, manifest, &mut table, Cells::Opened).ok();
                let ranges = checked.as_ref().map(|u| u.frame_ranges().to_vec());
                *unpacker = checked;
                let archive_id = manifest.archive_id;
                node.session
                    .table_checked(now, reception, archive_id, ranges);
            }
            Command::Rebuild { reception, rebuild } => {
                let (manifest, ..) = &node.storage[&reception];
                let archive_id = manifest.archive_id;
                let body = &mut node.disk.get_mut(&manifest.name).unwrap().body;
                let receiver = node.session.reception(reception).map(|r| r.receiver());
                let result = receiver.map(|r| r.rebuild_in_body(body, &rebuild));
                if let Some(Err(e)) = result {
                    // A wrong shard: the block is repaired by copies from then on.
                    let by_copies = e == FecError::WrongShard;
                    (node.session).rebuild_failed(
                        now,
                        reception,
                        archive_id,
                        &rebuild.missing,
                        by_copies,
                    );
                }
            }
            Command::Unpack { reception, frames } => {
                let (manifest, unpacker, verified) = node.storage.get_mut(&reception).unwrap();
                let unpacker = unpacker.as_mut().expect("table checked first");
                let body = &node.disk[&manifest.name].body;
                let archive_id = manifest.archive_id;
                let mut failed = Vec::new();
                for f in frames {
                    let range = unpacker.frame_ranges()[f as usize].clone();
                    let mut cells = body[range.start as usize..range.end as usize].to_vec();
                    let mut scratch = vec![0u8; manifest.frame_size as usize];
                    match unpacker.open_in_place(f, &mut cells, &mut scratch, Cells::Opened) {
                        Ok(_) => {
                            verified.insert(f);
                        }
                        Err(_) => failed.push((f, range)),
                    }
                }
                let whole = verified.len() == unpacker.frame_ranges().len();
                for (f, range) in failed {
                    node.session
                        .frame_failed(now, reception, archive_id, f, range);
                }
                if whole {
                    node.session.delivered(now, reception, archive_id);
                }
            }
        }
    }
}
