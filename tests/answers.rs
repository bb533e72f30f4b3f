//! The director's answers to `push` and `jobs` are tagged for the request
//! they answer (T39): a push whose answers come from something else (a TCP
//! injector, a stale proxy) does not exit 0, and `jobs` with the key refuses
//! them too.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_loopcast");

/// An HTTP "director" that answers every request as a completed job would,
/// without a tag; its address.
fn impostor() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let at = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            let mut first = String::new();
            reader.read_line(&mut first).unwrap_or_default();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let target = first.split_whitespace().nth(1).unwrap_or("");
            let answer = match target.split('?').next().unwrap_or("") {
                "/v1/status" => r#"{"listen":"127.0.0.1:9","scheduling":true}"#.to_string(),
                "/v1/files" | "/v1/servers" => "[]".to_string(),
                _ => r#"{"id":1,"state":"complete","counts":{"done":1},"nodes":[{"node":"n1","state":"done","permille":1000,"failure":"none"}]}"#.to_string(),
            };
            let status = if first.starts_with("POST") {
                "201 Created"
            } else {
                "200 OK"
            };
            let mut out = stream;
            let _ = write!(
                out,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    at
}

#[test]
fn a_push_or_jobs_answered_by_an_impostor_does_not_take_its_word() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    assert!(
        Command::new(BIN)
            .args(["keygen", "-o"])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    let api = impostor().to_string();
    // Told the impostor's address as the API, and the site key.
    let asking = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .args(["--director", "127.0.0.1:9", "--api", &api, "-k"])
            .arg(&key)
            .output()
            .unwrap()
    };
    let push = asking(&["push", "f.bin", "--to", "n1"]);
    let err = String::from_utf8_lossy(&push.stderr);
    assert_ne!(push.status.code(), Some(0), "{err}");
    assert!(err.contains("does not verify with this key"), "{err}");
    let jobs = asking(&["jobs", "1"]);
    let err = String::from_utf8_lossy(&jobs.stderr);
    assert_eq!(jobs.status.code(), Some(1), "{err}");
    assert!(err.contains("does not verify"), "{err}");
}
