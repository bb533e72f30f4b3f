//! DATA (archive body bytes at fixed offsets) and MANIFEST packets.

use super::{DATA_HEADER_LEN, MAGIC, MacKey, PacketType, VERSION, datagram};

/// Header of a DATA packet (after the common header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Archive the payload belongs to.
    pub archive_id: u64,
    /// Packet number k: the payload is body bytes [k·P, k·P + len).
    pub packet_index: u32,
    /// Number of packets in one loop of the archive.
    pub packet_count: u32,
    /// Flag bits: `FLAG_REPAIR`; others are sent as 0 and ignored.
    pub flags: u16,
}
/// Writes a DATA header into `buf[..DATA_HEADER_LEN]`; the payload follows it.
pub fn write_data_header(buf: &mut [u8], session_id: u32, header: &DataHeader) {
    buf[0..2].copy_from_slice(&MAGIC);
    buf[2] = VERSION;
    buf[3] = PacketType::Data as u8;
    buf[4..8].copy_from_slice(&session_id.to_be_bytes());
    buf[8..16].copy_from_slice(&header.archive_id.to_be_bytes());
    buf[16..20].copy_from_slice(&header.packet_index.to_be_bytes());
    buf[20..24].copy_from_slice(&header.packet_count.to_be_bytes());
    buf[24..26].copy_from_slice(&header.flags.to_be_bytes());
    buf[26..28].copy_from_slice(&0u16.to_be_bytes());
}
/// Encodes a complete DATA datagram (used by tests and tools; the sender writes
/// in place). It has no tag: `payload` is sealed cells (spec §2.1).
pub fn encode_data(session_id: u32, header: &DataHeader, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; DATA_HEADER_LEN + payload.len()];
    write_data_header(&mut buf, session_id, header);
    buf[DATA_HEADER_LEN..].copy_from_slice(payload);
    buf
}
/// Header of a PARITY packet (after the common header), laid out like DATA's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParityHeader {
    /// Archive the block belongs to.
    pub archive_id: u64,
    /// Block number b: packets [b·BLOCK_PACKETS, …) (spec §6.5).
    pub block: u32,
    /// Number of packets in one loop of the archive.
    pub packet_count: u32,
    /// Which of the block's parity shards this is.
    pub parity_index: u16,
}
/// Writes a PARITY header into `buf[..DATA_HEADER_LEN]`; the shard follows it.
pub fn write_parity_header(buf: &mut [u8], session_id: u32, header: &ParityHeader) {
    buf[0..2].copy_from_slice(&MAGIC);
    buf[2] = VERSION;
    buf[3] = PacketType::Parity as u8;
    buf[4..8].copy_from_slice(&session_id.to_be_bytes());
    buf[8..16].copy_from_slice(&header.archive_id.to_be_bytes());
    buf[16..20].copy_from_slice(&header.block.to_be_bytes());
    buf[20..24].copy_from_slice(&header.packet_count.to_be_bytes());
    buf[24..26].copy_from_slice(&header.parity_index.to_be_bytes());
    buf[26..28].copy_from_slice(&0u16.to_be_bytes());
}
/// Encodes a complete PARITY datagram (tests and tools; the sender writes in
/// place). It has no tag: what it rebuilds is checked by its cells' tags (§2.11).
pub fn encode_parity(session_id: u32, header: &ParityHeader, shard: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; DATA_HEADER_LEN + shard.len()];
    write_parity_header(&mut buf, session_id, header);
    buf[DATA_HEADER_LEN..].copy_from_slice(shard);
    buf
}
/// Encodes a MANIFEST datagram around already-encoded manifest bytes.
pub fn encode_manifest(key: &MacKey, session_id: u32, manifest: &[u8]) -> Vec<u8> {
    datagram(key, PacketType::Manifest, session_id, |b| {
        b.extend_from_slice(manifest)
    })
}
