//! inotify on the state directory, so a complete change is read at once instead of at
//! the next poll. Polling stays the safety net (a missed or overflowed event queue, a
//! directory replaced under us): `wait` always returns after its timeout.
use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct DirWatch {
    fd: OwnedFd,
    dir: PathBuf,
}

/// Events that mean a file's change is complete: written and closed, renamed into or out
/// of the directory (how `kubectl apply`-like tools replace a file atomically), deleted.
const SETTLED: u32 = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE;

impl DirWatch {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        // SAFETY: plain syscall; the fd is owned below.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: valid fd and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), SETTLED | libc::IN_MODIFY) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            dir: dir.to_path_buf(),
        })
    }

    /// Waits until a file's change is complete or `timeout` passes; returns the files whose
    /// changes completed meanwhile. Files still being written only end the wait at the
    /// timeout, so a long write is not re-read at every chunk.
    pub fn wait(&self, timeout: Duration) -> BTreeSet<PathBuf> {
        let deadline = Instant::now() + timeout;
        let mut settled = BTreeSet::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !settled.is_empty() {
                return settled;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&raw mut pfd, 1, ms) } <= 0 {
                continue;
            }
            self.read_events(&mut settled);
        }
    }

    fn read_events(&self, settled: &mut BTreeSet<PathBuf>) {
        // Aligned for `inotify_event` headers.
        let mut buf = vec![0u64; 1024];
        loop {
            // SAFETY: reading into our own buffer of the given size.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len() * 8) };
            let Ok(n) = usize::try_from(n) else { return };
            if n == 0 {
                return;
            }
            // SAFETY: the kernel wrote `n` bytes of events into the buffer.
            let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
            for (mask, name) in parse_events(bytes) {
                if mask & SETTLED != 0 && !name.is_empty() {
                    settled.insert(self.dir.join(std::ffi::OsString::from_vec(name)));
                }
            }
        }
    }
}

/// (mask, file name) of each `struct inotify_event` in a read buffer.
fn parse_events(bytes: &[u8]) -> Vec<(u32, Vec<u8>)> {
    const HEADER: usize = 16; // wd, mask, cookie, len
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEADER <= bytes.len() {
        let word = |i: usize| u32::from_ne_bytes(bytes[at + i..at + i + 4].try_into().unwrap_or_default());
        let (mask, len) = (word(4), word(12) as usize);
        let end = (at + HEADER + len).min(bytes.len());
        let name = &bytes[at + HEADER..end];
        let name = name.split(|&b| b == 0).next().unwrap_or_default().to_vec();
        out.push((mask, name));
        at = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_padded_names() {
        let mut b = Vec::new();
        for (mask, name) in [(libc::IN_MOVED_TO, &b"svc.yaml"[..]), (libc::IN_MODIFY, b"")] {
            let padded = if name.is_empty() { 0 } else { 16 };
            b.extend_from_slice(&1i32.to_ne_bytes());
            b.extend_from_slice(&mask.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&(padded as u32).to_ne_bytes());
            let mut n = name.to_vec();
            n.resize(padded, 0);
            b.extend_from_slice(&n);
        }
        assert_eq!(
            parse_events(&b),
            vec![(libc::IN_MOVED_TO, b"svc.yaml".to_vec()), (libc::IN_MODIFY, Vec::new())]
        );
    }

    #[test]
    fn a_moved_in_file_ends_the_wait_early() {
        let dir = std::env::temp_dir().join(format!("moat-dirwatch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let w = DirWatch::new(&dir).unwrap();
        std::fs::write(dir.join(".tmp"), "x").unwrap();
        let _ = w.wait(Duration::from_millis(10)); // the temp file's own close
        std::fs::rename(dir.join(".tmp"), dir.join("a.yaml")).unwrap();
        let t = Instant::now();
        let got = w.wait(Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(got.contains(&dir.join("a.yaml")), "{got:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
