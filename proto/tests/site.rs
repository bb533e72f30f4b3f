//! A site on the virtual LAN: several servers carrying the same archive, a
//! director, and receivers told only the director (spec §9).

mod lan;

use lan::{DIRECTOR, Lan, one_file, server_addr};
use std::time::Duration;

/// Receivers told only the director, on multicast unless `unicast`.
fn directed_nodes(lan: &mut Lan, count: usize, unicast: bool, stay_joined: bool) -> Vec<usize> {
    let name = lan.files[0].manifest.name.clone();
    (0..count)
        .map(|_| {
            let name = name.clone();
            lan.add_node(
                move |c| {
                    c.names = vec![name];
                    c.directors = vec![DIRECTOR];
                    c.unicast_only = unicast;
                    c.stay_joined = stay_joined;
                },
                !unicast,
            )
        })
        .collect()
}

/// Four receivers take a 16 MB file from server 0, which dies when they hold
/// about 40% of it; they finish from server 1 (started a second later, so its
/// loop is elsewhere). Returns, per receiver, the share of the file's packets it
/// took twice from server 1 (held already, or come before it could check them).
fn failover(stay_joined: bool) -> Vec<f64> {
    let mut lan = Lan::new(one_file(16_000_000), |_| {});
    lan.add_director(|_| {});
    let nodes = directed_nodes(&mut lan, 4, false, stay_joined);
    lan.run(Duration::from_secs(1));
    let alternate = lan.add_server(|_| {});
    let total = lan.files[0].manifest.packet_count();
    let name = lan.files[0].manifest.name.clone();
    let held = |l: &Lan| nodes.iter().all(|&n| l.held(n) >= total * 2 / 5);
    assert!(lan.run_until(Duration::from_secs(10), held));
    assert!(
        nodes.iter().all(|&n| lan.held(n) < total / 2),
        "the primary is killed at about 40%"
    );
    lan.servers[0].down = true;
    let delivered = |l: &Lan| nodes.iter().all(|&n| l.delivered(n, &name));
    assert!(lan.run_until(Duration::from_secs(20), delivered));
    nodes
        .iter()
        .map(|&n| {
            assert!(lan.body_matches(n, 0));
            let r = &lan.nodes[n].session.receptions()[0];
            assert_eq!(r.server(), Some(server_addr(alternate)));
            let s = r.receiver().stats();
            (s.duplicates + s.before_manifest) as f64 / total as f64
        })
        .collect()
}

#[test]
fn receivers_of_a_server_that_dies_finish_from_the_alternate_taking_under_1_percent_twice() {
    let leaving = failover(false);
    let staying = failover(true);
    println!("taken twice from the alternate: {leaving:?} leaving, {staying:?} staying joined");
    for share in leaving {
        assert!(share < 0.01, "{share}");
    }
    // Staying joined, the alternate's loop brings again most of what was held.
    for share in staying {
        assert!(share > 0.2, "{share}");
    }
}

#[test]
fn six_unicast_receivers_split_three_and_three_over_two_servers_taking_three_each() {
    let mut lan = Lan::new(one_file(2_000_000), |_| {});
    let three = |c: &mut loopcast_proto::server::ServerConfig| c.unicast_max_clients = 3;
    lan.add_director(three);
    lan.add_server(three);
    // Both servers heartbeat before the receivers ask.
    lan.run(Duration::from_millis(1500));
    let nodes = directed_nodes(&mut lan, 6, true, false);
    let name = lan.files[0].manifest.name.clone();
    let delivered = |l: &Lan| nodes.iter().all(|&n| l.delivered(n, &name));
    assert!(lan.run_until(Duration::from_secs(20), delivered));
    let mut per_server = [0; 2];
    for &n in &nodes {
        assert!(lan.body_matches(n, 0));
        let r = &lan.nodes[n].session.receptions()[0];
        let server = r.stream_server().expect("streamed by unicast");
        per_server[(server == server_addr(1)) as usize] += 1;
    }
    assert_eq!(per_server, [3, 3]);
}

/// A receiver told only the director, which no multicast reaches: its server
/// answers its listing request by unicast, so it is alive; the receiver asks it
/// for a unicast stream rather than giving it up (and looking it up again in a
/// loop, which is what it did before).
#[test]
fn a_directed_receiver_that_hears_no_multicast_takes_a_unicast_stream_from_the_server_named() {
    let mut lan = Lan::new(one_file(2_000_000), |_| {});
    lan.add_director(|_| {});
    let name = lan.files[0].manifest.name.clone();
    let wanted = name.clone();
    let node = lan.add_node(
        move |c| {
            c.names = vec![wanted];
            c.directors = vec![DIRECTOR];
        },
        false,
    );
    let delivered = |l: &Lan| l.delivered(node, &name);
    assert!(lan.run_until(Duration::from_secs(30), delivered));
    assert!(lan.body_matches(node, 0));
    let r = &lan.nodes[node].session.receptions()[0];
    assert!(r.stream_server().is_some(), "not by a unicast stream");
    let events = format!("{:?}", lan.nodes[node].events);
    assert!(!events.contains("ServerLost"), "{events}");
    let answered = lan.director.as_ref().unwrap().stats().answered;
    assert!(answered <= 2, "{answered} look-ups answered");
}
