//! Payloads written at their offsets, runs of consecutive ones with one
//! `pwritev` each.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Most payloads one vectored write takes (the kernel's IOV_MAX).
const MAX_IOVECS: usize = 1024;

/// Writes `payloads` (offset, bytes) at `base` + their offsets: each run of
/// payloads that follow one another in the file with one vectored write.
pub fn write_runs(file: &File, payloads: &[(u64, &[u8])], base: u64) -> io::Result<()> {
    let mut rest = payloads;
    while let Some(&(start, _)) = rest.first() {
        let mut end = start;
        let run = rest
            .iter()
            .take(MAX_IOVECS)
            .take_while(|(offset, payload)| {
                let next = *offset == end;
                end += payload.len() as u64;
                next
            })
            .count();
        write_vectored_at(file, &rest[..run], base + start)?;
        rest = &rest[run..];
    }
    Ok(())
}

/// `pwritev` of consecutive `payloads` at `offset`, resumed after short writes.
fn write_vectored_at(file: &File, payloads: &[(u64, &[u8])], offset: u64) -> io::Result<()> {
    let mut iovs: Vec<libc::iovec> = payloads
        .iter()
        .map(|(_, p)| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let (mut first, mut at) = (0, offset);
    while first < iovs.len() {
        let rest = &iovs[first..];
        // SAFETY: every iovec points into a payload the caller keeps alive for this call.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                rest.as_ptr(),
                rest.len() as libc::c_int,
                at as libc::off_t,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // Skip what was written: whole iovecs, then part of the next.
        let mut written = n as usize;
        at += written as u64;
        while first < iovs.len() && written >= iovs[first].iov_len {
            written -= iovs[first].iov_len;
            first += 1;
        }
        if written > 0 {
            let iov = &mut iovs[first];
            // SAFETY: `written` is less than this iovec's length.
            iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(written) }.cast();
            iov.iov_len -= written;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn runs_of_payloads_go_to_their_places_past_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let file = fs::File::create(&path).unwrap();
        // 3000 payloads of 1 to 7 bytes (more than one vectored write takes),
        // consecutive from offset 5 but for a gap of 10 bytes after the 2000th.
        let payloads: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| vec![(i % 251) as u8; 1 + (i % 7) as usize])
            .collect();
        let mut at = 5u64;
        let mut expected = vec![0u8; 3 + 5];
        let runs: Vec<(u64, &[u8])> = (payloads.iter().enumerate())
            .map(|(i, p)| {
                if i == 2000 {
                    at += 10;
                    expected.extend([0u8; 10]);
                }
                let run = (at, p.as_slice());
                at += p.len() as u64;
                expected.extend(p);
                run
            })
            .collect();
        write_runs(&file, &runs, 3).unwrap();
        assert_eq!(fs::read(&path).unwrap(), expected);
    }
}
