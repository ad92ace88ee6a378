//! Start-up checks for io_uring, and the only `unsafe` in the crate (two libc
//! calls that fill caller-owned structs, and the non-blocking `send(2)` of the
//! direct delivery path).

use std::os::fd::RawFd;

use crate::EngineError;

/// glommio refuses to create an executor below this RLIMIT_MEMLOCK.
pub const MIN_MEMLOCK_BYTES: u64 = 512 * 1024;
/// Oldest kernel whose io_uring has everything glommio uses.
pub const MIN_KERNEL: (u32, u32) = (5, 8);

/// Fails with one actionable line when this process cannot run io_uring shards.
pub fn check_platform() -> Result<(), EngineError> {
    let memlock =
        memlock_limit().map_err(|e| EngineError::Platform(format!("cannot read RLIMIT_MEMLOCK ({e}); io_uring needs >= 512 KiB")))?;
    check_memlock(memlock)?;
    let release = kernel_release().map_err(|e| EngineError::Platform(format!("cannot read the kernel version via uname ({e})")))?;
    check_kernel(&release)
}

fn check_memlock(limit: Option<u64>) -> Result<(), EngineError> {
    match limit {
        Some(bytes) if bytes < MIN_MEMLOCK_BYTES => Err(EngineError::Platform(format!(
            "io_uring needs RLIMIT_MEMLOCK >= 512 KiB, this process has {} KiB: raise it with \
             `ulimit -l 1024` (or LimitMEMLOCK= in systemd, --ulimit memlock=... in docker)",
            bytes / 1024
        ))),
        _ => Ok(()),
    }
}

fn check_kernel(release: &str) -> Result<(), EngineError> {
    match parse_kernel(release) {
        Some(v) if v >= MIN_KERNEL => Ok(()),
        Some(_) => Err(EngineError::Platform(format!(
            "io_uring needs Linux >= {}.{}, this kernel is {release}: run on a newer kernel",
            MIN_KERNEL.0, MIN_KERNEL.1
        ))),
        None => Err(EngineError::Platform(format!("cannot parse the kernel release {release:?}; io_uring needs Linux >= 5.8"))),
    }
}

/// "6.8.0-45-generic" -> (6, 8).
fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The soft memlock limit in bytes; `None` means unlimited.
pub(crate) fn memlock_limit() -> std::io::Result<Option<u64>> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit that outlives the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur != libc::RLIM_INFINITY).then_some(lim.rlim_cur))
}

fn kernel_release() -> std::io::Result<String> {
    // SAFETY: utsname is plain old data; all-zero bytes is a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid, writable utsname that outlives the call.
    let rc = unsafe { libc::uname(&mut uts) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let bytes: Vec<u8> = uts.release.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// One non-blocking `send(2)` of `buf` on `fd` (no SIGPIPE); the bytes sent.
pub(crate) fn send_nonblocking(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the whole call
    // and the kernel only reads it; a bad `fd` is reported as an error.
    let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// The outcome of one socket's send in [`submit_sends`].
#[derive(Debug)]
pub(crate) enum SendOutcome {
    /// Completed: the bytes sent, or the error (`EAGAIN`, ...).
    Done(std::io::Result<usize>),
    /// Not submitted (the ring was full): nothing was written.
    NotSent,
    /// Submitted, but the completion was not seen (the ring failed or timed
    /// out): some of the frame may have been written, or may still be.
    Unknown,
}

/// Longest wait for the completions of one submission. Sends with
/// `MSG_DONTWAIT` complete inside `io_uring_enter`, so the wait returns at
/// once; the bound keeps a kernel that behaves otherwise from freezing the
/// shard.
const SEND_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// One non-blocking `send` SQE per socket (at most the ring's free
/// entries), submitted and reaped in one `io_uring_enter`; `results` gets
/// one outcome per socket, in order.
///
/// Returns false if some submitted send's completion was not seen: the
/// kernel may then still read `wire`, so the caller must keep it alive for
/// good and stop using the ring.
pub(crate) fn submit_sends(
    ring: &mut io_uring::IoUring,
    fds: impl ExactSizeIterator<Item = RawFd>,
    wire: &[u8],
    results: &mut Vec<SendOutcome>,
) -> bool {
    use io_uring::{opcode, types};
    let len = u32::try_from(wire.len()).unwrap_or(u32::MAX);
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    results.clear();
    results.resize_with(fds.len(), || SendOutcome::NotSent);
    let mut queued = 0;
    {
        let mut sq = ring.submission();
        for (i, fd) in fds.enumerate() {
            let sqe = opcode::Send::new(types::Fd(fd), wire.as_ptr(), len).flags(flags).build().user_data(i as u64);
            // SAFETY: the kernel reads `len` bytes at `wire.as_ptr()` until
            // the send completes; every completion is awaited below before
            // `wire` can go, and if that fails the caller keeps it alive.
            if unsafe { sq.push(&sqe) }.is_err() {
                break;
            }
            queued += 1;
        }
    }
    for r in results.iter_mut().take(queued) {
        *r = SendOutcome::Unknown;
    }
    let timeout = types::Timespec::from(SEND_WAIT);
    let args = types::SubmitArgs::new().timespec(&timeout);
    let mut reaped = 0;
    let mut interrupted = 0;
    while reaped < queued {
        if let Err(e) = ring.submitter().submit_with_args(queued - reaped, &args) {
            // ETIME: the wait expired; EINTR: a signal, try again.
            if e.kind() == std::io::ErrorKind::Interrupted && interrupted < 100 {
                interrupted += 1;
                continue;
            }
            tracing::error!(error = %e, submitted = queued, completed = reaped, "batched sends did not complete");
        }
        let before = reaped;
        for cqe in ring.completion() {
            reaped += 1;
            if let Some(slot) = usize::try_from(cqe.user_data()).ok().and_then(|i| results.get_mut(i)) {
                let r = cqe.result();
                *slot = SendOutcome::Done(if r >= 0 { Ok(r as usize) } else { Err(std::io::Error::from_raw_os_error(-r)) });
            }
        }
        if reaped == before {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(parse_kernel("6.8.0-45-generic"), Some((6, 8)));
        assert_eq!(parse_kernel("5.10.102.1-microsoft-standard-WSL2"), Some((5, 10)));
        assert_eq!(parse_kernel("garbage"), None);
    }

    #[test]
    fn old_kernel_and_low_memlock_are_rejected_with_a_hint() {
        let err = check_kernel("5.4.0").unwrap_err().to_string();
        assert!(err.contains("5.8"), "{err}");
        assert!(check_kernel("5.8.0").is_ok());
        let err = check_memlock(Some(64 * 1024)).unwrap_err().to_string();
        assert!(err.contains("64 KiB") && err.contains("ulimit -l"), "{err}");
        assert!(check_memlock(None).is_ok());
        assert!(check_memlock(Some(MIN_MEMLOCK_BYTES)).is_ok());
    }

    #[test]
    fn this_machine_passes() {
        check_platform().expect("test machine supports io_uring");
    }
}
