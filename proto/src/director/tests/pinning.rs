//! Jobs and look-ups pinned to one archive of a name (T41): two archives of one
//! name are never mixed, and a job names the one it was made for.

use super::*;

fn spec(files: &[&str], archives: Vec<u64>) -> crate::jobs::JobSpec {
    crate::jobs::JobSpec {
        files: files.iter().map(|f| f.to_string()).collect(),
        targets: vec!["n".into()],
        deadline_ms: 600_000,
        max_rate_bps: 0,
        request_id: 0,
        archives,
    }
}

/// A director with two servers carrying archives 5 and 6 of "f", and node "n".
fn two_archives() -> Site {
    let mut site = Site::new();
    for ms in [0, 1000, 2000, 3000] {
        site.beat(
            ms,
            addr(1, 7700),
            1,
            heartbeat(ms + 1, 0, 16),
            &[("f", 5), ("g", 9)],
        );
        site.beat(ms, addr(2, 7700), 2, heartbeat(ms + 1, 0, 16), &[("f", 6)]);
    }
    let r = wire::Register {
        sequence: 1,
        started_ms: 1,
        cookie: site.director.cookies.issue(site.at(3000), addr(20, 1)),
        free_bytes: 0,
        node: "n".into(),
        jobs: Vec::new(),
    };
    let bytes = wire::encode_register(&key().director_mac_key(), 1, &r);
    site.director
        .handle_datagram(site.at(3000), addr(20, 1), &bytes);
    while site.director.poll_transmit().is_some() {}
    site
}

#[test]
fn a_job_of_a_name_on_two_archives_must_name_one_and_is_pinned_to_it() {
    let mut site = two_archives();
    let now = site.at(3100);
    assert_eq!(
        site.director.create_job(now, spec(&["f"], vec![])),
        Err(crate::jobs::JobError::Ambiguous("f".into(), vec![5, 6]))
    );
    assert!(matches!(
        site.director.create_job(now, spec(&["f"], vec![7])),
        Err(crate::jobs::JobError::NotCarried(_))
    ));
    let id = site
        .director
        .create_job(now, spec(&["f"], vec![6]))
        .unwrap();
    assert_eq!(site.director.job(id).unwrap().spec.archives, vec![6]);
    // A name on one archive is pinned to it without being asked.
    let id = site.director.create_job(now, spec(&["g"], vec![])).unwrap();
    assert_eq!(site.director.job(id).unwrap().spec.archives, vec![9]);
}

#[test]
fn a_lookup_pinned_to_an_archive_is_named_only_its_servers() {
    let mut site = two_archives();
    let question = |nonce, archive_id| {
        wire::encode_lookup(
            &key().director_mac_key(),
            &Lookup {
                receiver_id: 1,
                nonce,
                name: "f".into(),
                archive_id,
            },
        )
    };
    for (nonce, archive, server) in [(1, 5, addr(1, 7700)), (2, 6, addr(2, 7700))] {
        site.director
            .handle_datagram(site.at(3200), addr(30, 5), &question(nonce, archive));
        let (_, answer) = site.director.poll_transmit().unwrap();
        let Packet::Directions(d) = wire::decode(&answer).unwrap().packet else {
            panic!("not directions");
        };
        assert_eq!((d.archive_id, servers(&d)), (archive, vec![server]));
    }
}
