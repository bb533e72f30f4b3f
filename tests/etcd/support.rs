//! The etcd lab test's helpers: the lab's TLS files, and etcd's
//! administrator (run inside the lab as the ignored test `etcd_admin`).

use super::common::path;
use super::{DIRECTOR_PASSWORD, ETCD};
use std::time::{Duration, Instant};

/// The lab's TLS files: a CA, etcd's certificate (10.77.0.1; for clients too,
/// since etcd's gateway dials its own gRPC with it) and a client's.
pub struct Tls {
    pub ca: std::path::PathBuf,
    pub server_cert: std::path::PathBuf,
    pub server_key: std::path::PathBuf,
    pub client_cert: std::path::PathBuf,
    pub client_key: std::path::PathBuf,
}

impl Tls {
    pub fn make(dir: &std::path::Path) -> Tls {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        use std::os::unix::fs::PermissionsExt;
        let write = |name: &str, text: String, secret: bool| {
            let at = dir.join(name);
            std::fs::write(&at, text).unwrap();
            let mode = if secret { 0o600 } else { 0o644 };
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(mode)).unwrap();
            at
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |sans: Vec<String>, uses: Vec<Eku>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(sans).unwrap();
            params.extended_key_usages = uses;
            // No Common Name: etcd's gateway refuses a client certificate
            // with one once authentication is on.
            params.distinguished_name = rcgen::DistinguishedName::new();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            vec!["10.77.0.1".into()],
            vec![Eku::ServerAuth, Eku::ClientAuth],
        );
        let (client_cert, client_key) = leaf(vec!["director".into()], vec![Eku::ClientAuth]);
        Tls {
            ca: write("ca.pem", ca_cert.pem(), false),
            server_cert: write("etcd.pem", server_cert, false),
            server_key: write("etcd.key", server_key, true),
            client_cert: write("client.pem", client_cert, false),
            client_key: write("client.key", client_key, true),
        }
    }

    /// What `etcd_admin` needs to reach etcd, and its `action`.
    pub fn env(&self, action: &str) -> Vec<(&'static str, String)> {
        vec![
            ("ETCD_ADMIN", action.to_owned()),
            ("ETCD_CA", path(&self.ca).to_owned()),
            ("ETCD_CERT", path(&self.client_cert).to_owned()),
            ("ETCD_KEY", path(&self.client_key).to_owned()),
        ]
    }
}

/// Run inside the lab by `etcd_admin` (ETCD_ADMIN=setup, rotate, or forge JOB_ID):
/// etcd's administrator over its JSON gateway, with the lab's client certificate.
pub fn run() {
    let Ok(action) = std::env::var("ETCD_ADMIN") else {
        return;
    };
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let read = |var: &str| std::fs::read(std::env::var(var).unwrap()).unwrap();
    let pem_certs = |pem: Vec<u8>| -> Vec<ureq::tls::Certificate<'static>> {
        (ureq::tls::parse_pem(&pem))
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect()
    };
    let key = ureq::tls::PrivateKey::from_pem(&read("ETCD_KEY")).unwrap();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&pem_certs(read(
            "ETCD_CA",
        ))))
        .client_cert(Some(ureq::tls::ClientCert::new_with_certs(
            &pem_certs(read("ETCD_CERT")),
            key,
        )))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    // (status, JSON answer) of a POST, with a token or none.
    let call = |path: &str, body: serde_json::Value, token: Option<&str>| {
        let mut request = agent.post(format!("{ETCD}{path}"));
        if let Some(token) = token {
            request = request.header("Authorization", token);
        }
        let mut answer = request.send(body.to_string())?;
        let text = answer.body_mut().read_to_string()?;
        Ok::<_, ureq::Error>((
            answer.status().as_u16(),
            serde_json::from_str(&text).unwrap_or_default(),
        ))
    };
    let ok = |(status, answer): (u16, serde_json::Value), what: &str| {
        assert_eq!(status, 200, "{what}: {answer}");
        answer
    };
    let root = || {
        let asked = serde_json::json!({"name": "root", "password": "lab-root"});
        let answer: serde_json::Value = call("/v3/auth/authenticate", asked, None).unwrap().1;
        answer["token"].as_str().unwrap().to_owned()
    };
    let mut words = action.split_whitespace();
    match words.next() {
        Some("setup") => {
            // etcd may still be starting.
            let start = Instant::now();
            while call("/v3/maintenance/status", serde_json::json!({}), None).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(15),
                    "etcd did not start"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            use serde_json::json;
            for (path, body) in [
                (
                    "/v3/auth/user/add",
                    json!({"name": "root", "password": "lab-root"}),
                ),
                ("/v3/auth/role/add", json!({"name": "root"})),
                (
                    "/v3/auth/user/grant",
                    json!({"user": "root", "role": "root"}),
                ),
                ("/v3/auth/role/add", json!({"name": "lab"})),
                (
                    "/v3/auth/role/grant",
                    json!({"name": "lab", "perm": {"permType": "READWRITE",
                           "key": b64("/lab"), "range_end": b64("/lac")}}),
                ),
                (
                    "/v3/auth/user/add",
                    json!({"name": "loopcast", "password": DIRECTOR_PASSWORD}),
                ),
                (
                    "/v3/auth/user/grant",
                    json!({"user": "loopcast", "role": "lab"}),
                ),
                ("/v3/auth/enable", json!({})),
            ] {
                ok(call(path, body, None).unwrap(), path);
            }
            println!("auth enabled");
        }
        Some("rotate") => {
            let token = root();
            let body = serde_json::json!({"name": "loopcast", "password": DIRECTOR_PASSWORD});
            ok(
                call("/v3/auth/user/changepw", body, Some(&token)).unwrap(),
                "changepw",
            );
            println!("password set");
        }
        Some("forge") => {
            let id: u64 = words.next().unwrap().parse().unwrap();
            let records = [
                (1u64, (0..17).map(|i| format!("f{i}")).collect::<Vec<_>>()),
                (2, vec!["x".repeat(256)]),
            ];
            let put = |key: String, value: String, token: Option<&str>| {
                let body = serde_json::json!({"key": b64(&key), "value": b64(&value)});
                call("/v3/kv/put", body, token).unwrap()
            };
            let record = |files: &[String], id: u64| {
                serde_json::json!({"id": id, "state": "active", "files": files, "targets": ["node-3"],
                                   "created_ms": 1, "deadline_ms": 600_000, "max_rate_bps": 0,
                                   "request_id": 0})
                .to_string()
            };
            // Without a user: refused.
            let (status, answer) = put(
                format!("/lab/jobs/{:020}", 1),
                record(&records[0].1, 1),
                None,
            );
            assert_ne!(status, 200, "{answer}");
            println!("refused without a user: {status} {answer}");
            let token = root();
            for (n, files) in &records {
                ok(
                    put(
                        format!("/lab/jobs/{n:020}"),
                        record(files, *n),
                        Some(&token),
                    ),
                    "put",
                );
            }
            let progress =
                r#"{"state":"done","permille":1000,"failure":"none","moved_ms":1,"detail":""}"#;
            ok(
                put(
                    format!("/lab/progress/{id:020}/node-9"),
                    progress.into(),
                    Some(&token),
                ),
                "put",
            );
            println!("wrote 3 bad records");
        }
        other => panic!("unknown action {other:?}"),
    }
}
