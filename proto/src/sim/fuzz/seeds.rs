//! The seed datagrams of the fuzzing world: one valid datagram of each type,
//! for mutation.

use super::*;

impl World {
    /// One valid datagram of each type, for mutation.
    pub(super) fn make_seeds(&self) -> Vec<Vec<u8>> {
        let (m, keys, directory) = (
            &self.manifest,
            self.session_keys(),
            self.key.directory_mac_key(),
        );
        let (id, count) = (m.archive_id, m.packet_count());
        let entry = AnnounceEntry {
            archive_id: id,
            original_size: m.original_size,
            body_len: m.body_len,
            content_digest: m.content_digest,
            flags: 0,
            name: m.name.clone(),
            channels: vec![ChannelInfo {
                group: self.channel.group,
                control_port: self.channel.control_port,
                rate_bps: self.channel.rate_bps,
            }],
        };
        let announce = Announce {
            part: 0,
            parts: 1,
            unicast_port: 7000,
            key_fingerprint: self.key.fingerprint(),
            entries: vec![entry],
        };
        let data = DataHeader {
            archive_id: id,
            packet_index: 0,
            packet_count: count,
            flags: 0,
        };
        let status = wire::Status {
            archive_id: id,
            server_time_us: 1,
            grtt_us: 5000,
            group_size: 3,
            rate_bps: 50_000_000,
            lacking: 0,
        };
        let nak = wire::Nak {
            archive_id: id,
            receiver_id: 9,
            echo_time_us: 1,
            hold_us: 0,
            ranges: vec![(1, 3), (10, 60000)],
            blocks: vec![(0, 2)],
        };
        let blocks = crate::fec::Blocks::of_manifest(m);
        let parity = wire::ParityHeader {
            archive_id: id,
            block: 0,
            packet_count: count,
            parity_index: 0,
        };
        let shard = vec![5u8; blocks.shard_len()];
        let report = wire::Report {
            archive_id: id,
            receiver_id: 9,
            channel: 0,
            held: 3,
            packet_count: count,
            arrived: 100,
            lost: 5,
            interval_ms: 1000,
            kernel_drops: 0,
            // The first STATUS a carousel sends carries time 1.
            echo_time_us: 1,
        };
        let done = wire::Done {
            archive_id: id,
            receiver_id: 9,
            elapsed_ms: 10,
        };
        let director = self.key.director_mac_key();
        let heartbeat = wire::Heartbeat {
            sequence: 1,
            started_ms: 1_000,
            unicast_port: 7000,
            listing_parts: 1,
            capacity_bps: 100_000_000,
            sending_bps: 50_000_000,
            unicast_clients: 1,
            unicast_max_clients: MAX_CLIENTS as u16,
            receivers: 2,
            cpu_permille: 300,
            cookie: [0; wire::COOKIE_LEN],
            subnets: vec![wire::SubnetThroughput {
                subnet: wire::Subnet::V4([10, 0, 0]),
                receivers: 2,
                goodput_kbps: 40_000,
            }],
        };
        let lookup = wire::Lookup {
            receiver_id: 9,
            nonce: 1,
            name: m.name.clone(),
            archive_id: 0,
        };
        let directions = wire::Directions {
            nonce: 1,
            found: wire::Found::Carried,
            name: m.name.clone(),
            archive_id: id,
            servers: vec![wire::Direction {
                server: SocketAddr::new(Ipv4Addr::new(10, 0, 0, 1).into(), 7000),
                session_id: SESSION,
                load_permille: 500,
            }],
        };
        let request = wire::Request {
            receiver_id: 9,
            flags: wire::REQUEST_UNICAST | wire::REQUEST_START,
            max_rate_bps: 0,
            cookie: [0; wire::COOKIE_LEN],
            name: m.name.clone(),
        };
        let payload = &self.body[..m.payload_size as usize];
        vec![
            wire::encode_announce(&directory, SESSION, &announce),
            wire::encode_manifest(&keys.mac, SESSION, &self.manifest_bytes),
            wire::encode_data(SESSION, &data, payload),
            wire::encode_parity(SESSION, &parity, &shard),
            wire::encode_status(&keys.mac, SESSION, &status),
            wire::encode_nak(&keys.mac, SESSION, &nak),
            wire::encode_report(&keys.mac, SESSION, &report),
            wire::encode_done(&keys.mac, SESSION, &done),
            wire::encode_request(&directory, 0, &request),
            wire::encode_cookie(&directory, SESSION, &[3; wire::COOKIE_LEN]),
            wire::encode_heartbeat(&director, SESSION, &heartbeat),
            wire::encode_lookup(&director, &lookup),
            wire::encode_directions(&director, &directions),
            wire::encode_redirect(
                &director,
                &wire::Redirect {
                    reason: wire::RedirectReason::ServerDown,
                    directions: directions.clone(),
                },
            ),
            wire::encode_register(
                &director,
                7,
                &wire::Register {
                    sequence: 1,
                    started_ms: 1_000,
                    cookie: [0; wire::COOKIE_LEN],
                    free_bytes: 1 << 30,
                    node: FUZZ_NODE.into(),
                    jobs: vec![wire::JobReport {
                        job_id: FUZZ_JOB,
                        state: wire::AgentJobState::Receiving,
                        permille: 10,
                        failure: wire::JobFailure::None,
                        detail: String::new(),
                    }],
                },
            ),
            wire::encode_assign(
                &director,
                7,
                &wire::Assign {
                    echo: 1,
                    job_id: FUZZ_JOB,
                    action: wire::AssignAction::Fetch,
                    remaining_ms: 60_000,
                    max_rate_bps: 0,
                    files: vec![m.name.clone()],
                    archives: vec![m.archive_id],
                },
            ),
        ]
    }
}
