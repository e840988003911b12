//! inotify on the state directory (the `inotify` crate), so a complete change is read at
//! once instead of at the next poll. Polling stays the safety net (a missed or overflowed
//! event queue, a directory replaced under us): `wait` always returns after its timeout.
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchMask};

pub struct DirWatch {
    inotify: RefCell<Inotify>,
    dir: PathBuf,
}

/// Events that mean a file's change is complete: written and closed, renamed into or out
/// of the directory (how `kubectl apply`-like tools replace a file atomically), deleted.
fn settled(mask: EventMask) -> bool {
    mask.intersects(EventMask::CLOSE_WRITE | EventMask::MOVED_TO | EventMask::MOVED_FROM | EventMask::DELETE)
}

impl DirWatch {
    /// # Errors
    /// When inotify is unavailable or the directory cannot be watched.
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let inotify = Inotify::init()?;
        inotify.watches().add(
            dir,
            WatchMask::CLOSE_WRITE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::DELETE
                | WatchMask::MODIFY,
        )?;
        Ok(Self {
            inotify: RefCell::new(inotify),
            dir: dir.to_path_buf(),
        })
    }

    /// Waits until a file's change is complete or `timeout` passes; returns the files whose
    /// changes completed meanwhile. Files still being written only end the wait at the
    /// timeout, so a long write is not re-read at every chunk.
    pub fn wait(&self, timeout: Duration) -> BTreeSet<PathBuf> {
        let deadline = Instant::now() + timeout;
        let mut done = BTreeSet::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !done.is_empty() {
                return done;
            }
            let mut pfd = libc::pollfd {
                fd: self.inotify.borrow().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&raw mut pfd, 1, ms) } <= 0 {
                continue;
            }
            let mut inotify = self.inotify.borrow_mut();
            // The fd is non-blocking: read until it is empty.
            while let Ok(events) = inotify.read_events(&mut buf) {
                let mut any = false;
                for e in events {
                    any = true;
                    if let Some(name) = e.name.filter(|_| settled(e.mask)) {
                        done.insert(self.dir.join(name));
                    }
                }
                if !any {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A file still being written does not end the wait early.
        let f = std::fs::File::create(dir.join("b.yaml")).unwrap();
        let _ = w.wait(Duration::from_millis(10));
        std::io::Write::write_all(&mut &f, b"y").unwrap();
        let t = Instant::now();
        let got = w.wait(Duration::from_millis(200));
        assert!(t.elapsed() >= Duration::from_millis(190), "{got:?}");
        assert!(got.is_empty(), "{got:?}");
        drop(f);
        assert!(
            w.wait(Duration::from_secs(5)).contains(&dir.join("b.yaml")),
            "closed after writing"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
