//! Genuine heartbeats, REGISTERs and look-ups sent again (T21, T29, T36): they
//! evict no live server, list no dead one, take no node's record, and count
//! no load.

use super::*;

/// A heartbeat of a server started at `started_ms`.
fn beat_of(sequence: u64, started_ms: u64) -> Heartbeat {
    Heartbeat {
        started_ms,
        ..heartbeat(sequence, 0, 16)
    }
}

/// A server's own heartbeat (its address proven).
fn send(site: &mut Site, ms: u64, from: SocketAddr, session: u32, h: &Heartbeat) {
    site.heartbeat_proven(ms, from, session, h);
}

/// A heartbeat sent again, with the cookie it carried when captured (that of
/// its server's address; none from elsewhere).
fn replay(site: &mut Site, ms: u64, from: SocketAddr, session: u32, h: &Heartbeat) {
    let mut h = h.clone();
    h.cookie = site.cookies.get(&from).copied().unwrap_or_default();
    let bytes = wire::encode_heartbeat(&key().director_mac_key(), session, &h);
    site.director.handle_datagram(site.at(ms), from, &bytes);
    while site.director.poll_transmit().is_some() {}
}

fn sessions(site: &Site) -> Vec<u32> {
    let mut s: Vec<u32> = site.director.servers().map(|s| s.session_id).collect();
    s.sort();
    s
}

#[test]
fn an_earlier_sessions_heartbeat_replayed_from_a_live_servers_address_evicts_nothing() {
    let mut site = Site::new();
    let server = addr(1, 7700);
    // Session 1 (started at 1000) ran; the server restarted as session 2 (2000).
    let old = beat_of(500, 1000);
    send(&mut site, 0, server, 1, &old);
    send(&mut site, 100, server, 2, &beat_of(10, 2000));
    assert_eq!(sessions(&site), [2]);
    // Session 1's heartbeat, replayed from the server's own address.
    let stale = site.director.stats().stale;
    replay(&mut site, 200, server, 1, &old);
    assert_eq!(sessions(&site), [2], "the live session stays");
    assert_eq!(site.director.stats().stale, stale + 1);
}

#[test]
fn a_dead_sessions_heartbeats_replayed_from_elsewhere_list_nothing_until_it_comes_back() {
    let mut site = Site::new();
    let last = beat_of(3000, 1000);
    send(&mut site, 0, addr(1, 7700), 1, &last);
    // Unheard for three intervals: down.
    site.director.handle_timeout(site.at(3500));
    assert!(sessions(&site).is_empty());
    // Its last heartbeat, replayed from another address: still not listed.
    replay(&mut site, 4000, addr(66, 7700), 1, &last);
    assert!(
        sessions(&site).is_empty(),
        "a dead session replayed is listed"
    );
    // The server itself comes back (a later heartbeat of the session).
    send(&mut site, 5000, addr(1, 7700), 1, &beat_of(8000, 1000));
    assert_eq!(sessions(&site), [1]);
}

fn register_of(sequence: u64, started_ms: u64) -> wire::Register {
    wire::Register {
        sequence,
        started_ms,
        cookie: [0; wire::COOKIE_LEN],
        free_bytes: 0,
        node: "n1".into(),
        jobs: Vec::new(),
    }
}

/// `r` from `from` with a cookie the director would have given that address.
fn register(site: &mut Site, ms: u64, from: SocketAddr, instance: u32, r: &wire::Register) {
    let mut r = r.clone();
    r.cookie = site.director.cookies.issue(site.at(ms), from);
    let bytes = wire::encode_register(&key().director_mac_key(), instance, &r);
    site.director.handle_datagram(site.at(ms), from, &bytes);
    while site.director.poll_transmit().is_some() {}
}

#[test]
fn an_earlier_agent_runs_register_replayed_takes_no_nodes_record() {
    let mut site = Site::new();
    let node = addr(20, 40000);
    let old = register_of(900, 1000);
    register(&mut site, 0, node, 1, &old);
    // The agent restarted (instance 2, started later).
    register(&mut site, 100, node, 2, &register_of(10, 2000));
    assert_eq!(site.director.node("n1").unwrap().instance, 2);
    // Instance 1's REGISTER replayed, from anywhere, before each real one.
    let stale = site.director.stats().stale_registers;
    for (ms, seq) in [(200, 20), (1200, 1020), (2200, 2020)] {
        register(&mut site, ms, addr(66, 1), 1, &old);
        let n = site.director.node("n1").unwrap();
        assert_eq!(
            (n.instance, n.address),
            (2, node),
            "the replay took the record"
        );
        register(&mut site, ms + 1, node, 2, &register_of(seq, 2000));
    }
    assert_eq!(site.director.stats().stale_registers, stale + 3);
}

#[test]
fn a_replayed_lookup_counts_no_load_and_is_answered_at_most_twice_a_second() {
    let mut site = Site::new();
    site.beat(0, addr(1, 7700), 1, heartbeat(1, 0, 16), &[("f", 9)]);
    site.beat(1000, addr(1, 7700), 1, heartbeat(1001, 0, 16), &[("f", 9)]);
    site.beat(2000, addr(1, 7700), 1, heartbeat(2001, 0, 16), &[("f", 9)]);
    let receiver = addr(30, 5000);
    let _ = site.lookup(2100, receiver, "f");
    let directed = |site: &Site| site.director.servers().next().unwrap().directed;
    assert_eq!(directed(&site), 1);
    let question = wire::encode_lookup(
        &key().director_mac_key(),
        &Lookup {
            archive_id: 0,
            receiver_id: 1,
            nonce: 42,
            name: "f".into(),
        },
    );
    // Ten replays at once: no answer, no load.
    for _ in 0..10 {
        site.director
            .handle_datagram(site.at(2200), receiver, &question);
    }
    assert!(site.director.poll_transmit().is_none());
    assert_eq!(directed(&site), 1);
    // A retry after 500 ms (the answer may have been lost): answered, no load.
    site.director
        .handle_datagram(site.at(2700), receiver, &question);
    assert!(site.director.poll_transmit().is_some());
    assert_eq!(directed(&site), 1);
    assert_eq!(site.director.receivers().count(), 1);
    // The same question from other sources, even 500 ms and more later:
    // a replay (a retry comes from where it asked first).
    let replayed = site.director.stats().replayed;
    for (ms, source) in [(2710, 31), (3300, 32), (3900, 33)] {
        site.director
            .handle_datagram(site.at(ms), addr(source, 5000), &question);
    }
    assert!(site.director.poll_transmit().is_none());
    assert_eq!(directed(&site), 1);
    assert_eq!(site.director.receivers().count(), 1);
    assert_eq!(site.director.stats().replayed, replayed + 3);
}
