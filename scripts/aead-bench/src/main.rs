//! Seals and opens cell-sized messages in place with AES-256-GCM from
//! RustCrypto's `aes-gcm`, `ring` and `aws-lc-rs`, one core, and prints
//! MB/s for each (median of `RUNS` runs of `BYTES` bytes each).
//!
//! cargo run --release --manifest-path scripts/aead-bench/Cargo.toml

use std::hint::black_box;
use std::time::Instant;

/// Cell sizes: a 1500-byte IPv6 packet's payload, and a 9000-byte one's.
const SIZES: [usize; 2] = [1408, 8908];
/// Bytes sealed (and opened) per run.
const BYTES: usize = 256 << 20;
const RUNS: usize = 7;
const AAD_LEN: usize = 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// MB/s of `one` called on a `size`-byte buffer until `BYTES` bytes passed.
fn rate(size: usize, mut one: impl FnMut(&mut [u8], u64)) -> f64 {
    let mut buf = vec![7u8; size];
    let count = BYTES / size;
    median(
        (0..RUNS)
            .map(|_| {
                let start = Instant::now();
                for i in 0..count as u64 {
                    one(black_box(&mut buf), i);
                }
                (count * size) as f64 / start.elapsed().as_secs_f64() / 1e6
            })
            .collect(),
    )
}

fn nonce_of(i: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&i.to_be_bytes());
    n
}

/// The same measure for `ring` and `aws-lc-rs`, whose AEAD APIs are one.
macro_rules! ring_like {
    ($lib:ident, $name:expr, $size:expr, $key:expr, $aad:expr) => {{
        use $lib::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let (size, aad) = ($size, $aad);
        let k = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &$key).unwrap());
        let mut sealed = vec![7u8; size];
        let nonce = |i| Nonce::assume_unique_for_key(nonce_of(i));
        let tag = k
            .seal_in_place_separate_tag(nonce(0), Aad::from(aad), &mut sealed)
            .unwrap();
        sealed.extend_from_slice(tag.as_ref());
        let seal = rate(size, |buf, i| {
            let t = k.seal_in_place_separate_tag(nonce(i), Aad::from(aad), buf);
            let _ = black_box(t.unwrap());
        });
        let mut with_tag = vec![0u8; size + 16];
        let open = rate(size, |_, _| {
            with_tag.copy_from_slice(&sealed);
            k.open_in_place(nonce(0), Aad::from(aad), &mut with_tag)
                .unwrap();
        });
        println!("{size:>6}  {:<10} {seal:>10.0} {open:>10.0}", $name);
    }};
}

fn main() {
    let key = [3u8; 32];
    let aad = [5u8; AAD_LEN];
    println!(
        "{:>6}  {:<10} {:>10} {:>10}",
        "bytes", "library", "seal MB/s", "open MB/s"
    );
    for size in SIZES {
        // RustCrypto aes-gcm 0.11.
        {
            use aes_gcm::aead::{AeadInOut, KeyInit};
            use aes_gcm::{Aes256Gcm, Key, Nonce};
            let c = Aes256Gcm::new(&Key::<Aes256Gcm>::from(key));
            let mut plain = vec![7u8; size];
            let tag = c
                .encrypt_inout_detached(&Nonce::from(nonce_of(0)), &aad, (&mut plain[..]).into())
                .unwrap();
            let sealed = plain;
            let seal = rate(size, |buf, i| {
                let t = c
                    .encrypt_inout_detached(&Nonce::from(nonce_of(i)), &aad, buf.into())
                    .unwrap();
                let _ = black_box(t);
            });
            let open = rate(size, |buf, _| {
                buf.copy_from_slice(&sealed);
                c.decrypt_inout_detached(&Nonce::from(nonce_of(0)), &aad, buf.into(), &tag)
                    .unwrap();
            });
            println!("{size:>6}  {:<10} {seal:>10.0} {open:>10.0}", "aes-gcm");
        }
        ring_like!(ring, "ring", size, key, aad);
        ring_like!(aws_lc_rs, "aws-lc-rs", size, key, aad);
    }
}
