//! No answer larger than its request to an address not proven (§10.3): a
//! key holder's REGISTER from a spoofed source, for a node with the most and
//! largest jobs, brings back no more bytes than it sent; the agent itself, its
//! address proven by a cookie, gets its ASSIGNs.

use super::*;

/// A node name and file names as long as allowed: the largest ASSIGNs.
fn long_name(i: usize) -> String {
    format!("{i:02}{}", "f".repeat(253))
}

fn register_from(
    site: &mut Site,
    ms: u64,
    from: SocketAddr,
    instance: u32,
    r: &wire::Register,
) -> (usize, usize) {
    let bytes = wire::encode_register(&key().director_mac_key(), instance, r);
    site.director.handle_datagram(site.at(ms), from, &bytes);
    let out: usize = std::iter::from_fn(|| site.director.poll_transmit())
        .map(|(to, d)| {
            assert_eq!(to, from);
            d.len()
        })
        .sum();
    (bytes.len(), out)
}

fn register(sequence: u64, started_ms: u64, cookie: [u8; wire::COOKIE_LEN]) -> wire::Register {
    wire::Register {
        sequence,
        started_ms,
        cookie,
        free_bytes: 0,
        node: "n".into(),
        jobs: Vec::new(),
    }
}

/// The cookie in the HEARD answering a REGISTER from `from`.
fn cookie_for(
    site: &mut Site,
    ms: u64,
    from: SocketAddr,
    r: &wire::Register,
) -> [u8; wire::COOKIE_LEN] {
    let bytes = wire::encode_register(&key().director_mac_key(), 1, r);
    site.director.handle_datagram(site.at(ms), from, &bytes);
    let (_, heard) = site.director.poll_transmit().expect("an answer");
    match wire::decode(&heard).unwrap().packet {
        Packet::Heard(h) => h.cookie,
        other => panic!("not HEARD: {other:?}"),
    }
}

#[test]
fn a_spoofed_register_gets_no_more_bytes_than_it_sent_and_the_proven_agent_its_assigns() {
    let mut site = Site::new();
    let names: Vec<String> = (0..wire::MAX_JOB_FILES).map(long_name).collect();
    let files: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 5)).collect();
    site.beat(0, addr(1, 7700), 1, heartbeat(1, 0, 16), &files);
    site.beat(1000, addr(1, 7700), 1, heartbeat(1001, 0, 16), &files);
    let agent = addr(20, 40000);
    let cookie = cookie_for(
        &mut site,
        1100,
        agent,
        &register(100, 1000, [0; wire::COOKIE_LEN]),
    );
    // Its next REGISTER, with the cookie, makes the node.
    let _ = register_from(&mut site, 1200, agent, 1, &register(101, 1000, cookie));
    assert!(site.director.node("n").is_some_and(|n| n.proven));
    site.beat(2000, addr(1, 7700), 1, heartbeat(2001, 0, 16), &files);
    for _ in 0..wire::MAX_JOB_REPORTS {
        let spec = crate::jobs::JobSpec {
            archives: Vec::new(),
            files: names.clone(),
            targets: vec!["n".into()],
            deadline_ms: 600_000,
            max_rate_bps: 0,
            request_id: 0,
        };
        site.director.create_job(site.at(2100), spec).unwrap();
    }
    while site.director.poll_transmit().is_some() {}
    // A key holder's REGISTER for the node from a victim's address, without a
    // cookie (a later run, so it takes the record): a HEARD, shorter than it.
    let victim = addr(99, 53);
    let (asked, answered) = register_from(
        &mut site,
        2200,
        victim,
        2,
        &register(10, 2000, [0; wire::COOKIE_LEN]),
    );
    println!("spoofed REGISTER: {asked} bytes in, {answered} out");
    assert!(
        answered > 0 && answered <= asked,
        "{answered} bytes for {asked}"
    );
    // With the agent's own cookie, from the victim's address: still not proven.
    let (asked, answered) = register_from(&mut site, 2800, victim, 2, &register(20, 2000, cookie));
    assert!(answered <= asked, "{answered} bytes for {asked}");
    // The agent (a still later run) at its own address with its cookie (valid
    // 30 s): the ASSIGNs, many times what it sent.
    let (asked, answered) = register_from(&mut site, 3400, agent, 1, &register(30, 3000, cookie));
    println!("proven REGISTER: {asked} bytes in, {answered} out");
    assert!(answered > 10 * asked, "{answered} bytes for {asked}");
}

#[test]
fn no_request_brings_more_bytes_than_it_has_to_an_address_not_proven() {
    let mut site = Site::new();
    let server = addr(1, 7700);
    let h = heartbeat(1, 0, 16);
    let beat = wire::encode_heartbeat(&key().director_mac_key(), 1, &h);
    site.director.handle_datagram(site.at(0), server, &beat);
    let out: usize = std::iter::from_fn(|| site.director.poll_transmit())
        .map(|(_, d)| d.len())
        .sum();
    println!("HEARTBEAT: {} bytes in, {out} out", beat.len());
    assert!(out <= beat.len());
    let (asked, answered) = register_from(
        &mut site,
        100,
        addr(20, 1),
        1,
        &register(1, 1, [0; wire::COOKIE_LEN]),
    );
    println!("REGISTER: {asked} bytes in, {answered} out");
    assert!(answered <= asked);
    // LOOKUP: `lookup` checks every answer against its padded question.
    let _ = site.lookup(2500, addr(30, 5000), "absent");
}

#[test]
fn spoofed_registers_make_no_node_and_one_subnet_makes_at_most_its_share() {
    let mut site = Site::new();
    // 1000 node names from 1000 spoofed sources, no cookie: no node.
    for k in 0..1000u32 {
        let mut r = register(1, 1, [0; wire::COOKIE_LEN]);
        r.node = format!("fake-{k}");
        let from = SocketAddr::new(Ipv4Addr::from(0x0a63_0000 + k).into(), 9);
        let _ = register_from(&mut site, 10, from, k, &r);
    }
    assert_eq!(site.director.nodes().count(), 0);
    // One host with the key, proving its address: at most its subnet's share.
    let host = addr(50, 7);
    for k in 0..MAX_NODES_PER_SOURCE as u32 + 50 {
        let mut r = register(1, 1, site.director.cookies.issue(site.at(20), host));
        r.node = format!("many-{k}");
        let _ = register_from(&mut site, 20, host, k, &r);
    }
    assert_eq!(site.director.nodes().count(), MAX_NODES_PER_SOURCE);
    assert_eq!(site.director.stats().over_capacity, 50);
}
