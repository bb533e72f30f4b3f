//! DATA (archive body bytes at fixed offsets) and MANIFEST packets.

use super::{DATA_HEADER_LEN, DataMac, MAGIC, MacKey, PacketType, TRAILER_LEN, VERSION, datagram};

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
/// Encodes a complete DATA datagram (used by tests and tools; the sender writes in place).
pub fn encode_data(mac: &DataMac, session_id: u32, header: &DataHeader, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; DATA_HEADER_LEN + payload.len() + TRAILER_LEN];
    write_data_header(&mut buf, session_id, header);
    buf[DATA_HEADER_LEN..DATA_HEADER_LEN + payload.len()].copy_from_slice(payload);
    mac.seal_in_place(&mut buf, DATA_HEADER_LEN + payload.len());
    buf
}
/// Encodes a MANIFEST datagram around already-encoded manifest bytes.
pub fn encode_manifest(key: &MacKey, session_id: u32, manifest: &[u8]) -> Vec<u8> {
    datagram(key, PacketType::Manifest, session_id, |b| {
        b.extend_from_slice(manifest)
    })
}
