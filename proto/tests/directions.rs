//! A receiver session given directors, on a virtual clock: look-ups go round the
//! directors, only a tagged answer to the outstanding question counts, the server
//! named is asked for its listing, and "not carried" ends the session.

mod lan;

use loopcast_proto::MasterKey;
use loopcast_proto::client::{ClientError, ClientEvent, Origin, Session, Transmit};
use loopcast_proto::wire::{self, Direction, Directions, Found, Packet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

const D1: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 9, 1), 7790));
const D2: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 9, 2), 7790));
const SERVER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7700));

fn key() -> MasterKey {
    MasterKey::from_bytes([3; 32])
}

fn session(now: Instant) -> Session {
    let mut config = lan::client_config(key());
    config.names = vec!["image.bin".into()];
    config.directors = vec![D1, D2];
    Session::new(config, now, 7)
}

fn sent(s: &mut Session, now: Instant) -> Vec<Transmit> {
    s.handle_timeout(now);
    while s.poll_command().is_some() {}
    std::iter::from_fn(|| s.poll_transmit()).collect()
}

/// The nonce of the LOOKUP in `t`, which must go to `to`.
fn lookup_nonce(t: &Transmit, to: SocketAddr) -> u64 {
    assert_eq!(t.to, to);
    assert!(key().director_mac_key().verifies(&t.datagram));
    match wire::decode(&t.datagram).unwrap().packet {
        Packet::Lookup(l) => {
            assert_eq!(l.name, "image.bin");
            l.nonce
        }
        other => panic!("not a lookup: {other:?}"),
    }
}

fn answer(signer: &MasterKey, nonce: u64, found: Found) -> Vec<u8> {
    let servers = match found {
        Found::Carried => vec![Direction {
            server: SERVER,
            session_id: 5,
            load_permille: 0,
        }],
        _ => Vec::new(),
    };
    let d = Directions {
        nonce,
        found,
        name: "image.bin".into(),
        archive_id: if servers.is_empty() { 0 } else { 9 },
        servers,
    };
    wire::encode_directions(&signer.director_mac_key(), &d)
}

/// Answers the session's first LOOKUP (to D1) with `found`; returns its nonce.
fn first_answer(s: &mut Session, t0: Instant, found: Found) -> u64 {
    let nonce = lookup_nonce(&sent(s, t0)[0], D1);
    s.handle_datagram(
        t0,
        Origin::Link { from: D1 },
        &mut answer(&key(), nonce, found).to_vec(),
    );
    nonce
}

#[test]
fn lookups_go_round_the_directors_and_only_the_answer_to_the_question_counts() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let first = sent(&mut s, t0);
    assert_eq!(first.len(), 1);
    let nonce = lookup_nonce(&first[0], D1);
    // D1 is silent: a second later D2 is asked the same question.
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(1)));
    let second = sent(&mut s, t0 + Duration::from_secs(1));
    assert_eq!(lookup_nonce(&second[0], D2), nonce);
    // A stranger's answer, an answer to another question, and one from an
    // address that is no director are all ignored.
    let at = t0 + Duration::from_millis(1100);
    let stranger = MasterKey::from_bytes([4; 32]);
    s.handle_datagram(
        at,
        Origin::Link { from: D2 },
        &mut answer(&stranger, nonce, Found::Carried).to_vec(),
    );
    s.handle_datagram(
        at,
        Origin::Link { from: D2 },
        &mut answer(&key(), nonce + 1, Found::Carried).to_vec(),
    );
    s.handle_datagram(
        at,
        Origin::Link { from: SERVER },
        &mut answer(&key(), nonce, Found::Carried).to_vec(),
    );
    assert!(std::iter::from_fn(|| s.poll_event()).next().is_none());
    // The stranger's, and the one from the server (checked as a listing there).
    assert_eq!(s.unauthenticated(), 2);
    // The real answer: the server named is asked for its listing at once.
    s.handle_datagram(
        at,
        Origin::Link { from: D2 },
        &mut answer(&key(), nonce, Found::Carried).to_vec(),
    );
    assert_eq!(
        s.poll_event(),
        Some(ClientEvent::Directed {
            name: "image.bin".into(),
            servers: vec![SERVER]
        })
    );
    let asked = sent(&mut s, at);
    assert_eq!(asked.len(), 1, "no more lookups, one listing request");
    assert_eq!(asked[0].to, SERVER);
    assert!(matches!(
        wire::decode(&asked[0].datagram).unwrap().packet,
        Packet::Request(r) if r.name.is_empty() && r.flags == 0
    ));
    // Unanswered for 3 s, the server is given up and the directors asked again.
    let later = sent(&mut s, at + Duration::from_millis(3001));
    assert!(later.iter().any(|t| t.to == D1 || t.to == D2), "{later:?}");
    let lost = std::iter::from_fn(|| s.poll_event()).find_map(|e| match e {
        ClientEvent::ServerLost { server, next, .. } => Some((server, next)),
        _ => None,
    });
    assert_eq!(lost, Some((SERVER, None)));
}

#[test]
fn not_yet_known_is_asked_again_and_not_carried_ends_the_session() {
    let t0 = Instant::now();
    let mut s = session(t0);
    first_answer(&mut s, t0, Found::NotYetKnown);
    assert!(s.poll_event().is_none());
    let again = sent(&mut s, t0 + Duration::from_secs(1));
    let nonce = lookup_nonce(&again[0], D2);
    s.handle_datagram(
        t0,
        Origin::Link { from: D2 },
        &mut answer(&key(), nonce, Found::NotCarried).to_vec(),
    );
    assert_eq!(
        s.poll_event(),
        Some(ClientEvent::Failed(ClientError::NotCarried {
            name: "image.bin".into()
        }))
    );
}

#[test]
fn a_redirect_is_taken_once_and_only_with_the_nonce_of_the_last_answer() {
    let t0 = Instant::now();
    let mut s = session(t0);
    let nonce = first_answer(&mut s, t0, Found::Carried);
    while s.poll_event().is_some() {}
    sent(&mut s, t0);
    let other = SocketAddr::new(Ipv4Addr::new(10, 0, 0, 2).into(), 7700);
    let redirect = |nonce| {
        let directions = Directions {
            nonce,
            found: Found::Carried,
            name: "image.bin".into(),
            archive_id: 9,
            servers: vec![Direction {
                server: other,
                session_id: 6,
                load_permille: 0,
            }],
        };
        let r = wire::Redirect {
            reason: wire::RedirectReason::Overloaded,
            directions,
        };
        wire::encode_redirect(&key().director_mac_key(), &r)
    };
    let at = t0 + Duration::from_millis(100);
    s.handle_datagram(
        at,
        Origin::Link { from: D1 },
        &mut redirect(nonce + 1).to_vec(),
    );
    assert!(s.poll_event().is_none(), "another nonce moves nothing");
    s.handle_datagram(at, Origin::Link { from: D1 }, &mut redirect(nonce).to_vec());
    let events: Vec<_> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(events.contains(&ClientEvent::Redirected {
        name: "image.bin".into(),
        reason: wire::RedirectReason::Overloaded,
        to: Some(other),
    }));
    let asked = sent(&mut s, at);
    assert!(asked.iter().any(|t| t.to == other), "{asked:?}");
    // The same redirect again (a replay) is not taken.
    s.handle_datagram(at, Origin::Link { from: D1 }, &mut redirect(nonce).to_vec());
    assert!(s.poll_event().is_none());
}
