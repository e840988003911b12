//! Crash-safe JSON state files (node state, identities, service ids): written to a
//! temporary file, fsynced, renamed over the old one and the directory fsynced, so a crash
//! leaves either the old or the new file, never a torn one. The version before the last
//! write stays as `<file>.prev`: a file that is corrupt anyway (a disk error, a bad hand
//! edit) or deleted is recovered from it (`read_json_recovering`).
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Reads `path`; `None` when it does not exist.
///
/// # Errors
/// When it cannot be read or parsed.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The previous version of a state file.
#[must_use]
pub fn prev_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".prev");
    path.with_file_name(name)
}

/// Reads `path`, falling back to its previous version when it is missing or does not
/// parse (a corrupt file is kept aside as `<file>.corrupt` for inspection). `None` when
/// neither holds a state: the caller starts empty and must fail closed from there.
///
/// # Errors
/// When a file exists but cannot be read at all (permissions, I/O): the caller must not
/// guess at state it cannot see.
pub fn read_json_recovering<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match read_json(path) {
        Ok(Some(v)) => return Ok(Some(v)),
        Ok(None) => {}
        Err(e) if e.downcast_ref::<serde_json::Error>().is_some() => {
            let mut aside = path.file_name().unwrap_or_default().to_os_string();
            aside.push(".corrupt");
            let aside = path.with_file_name(aside);
            let _ = std::fs::rename(path, &aside);
            tracing::error!(file = %path.display(), kept = %aside.display(), "state file is corrupt: {e:#}");
        }
        Err(e) => return Err(e),
    }
    let prev = prev_path(path);
    match read_json(&prev) {
        Ok(Some(v)) => {
            tracing::warn!(file = %path.display(), "state recovered from {}", prev.display());
            Ok(Some(v))
        }
        Ok(None) => Ok(None),
        Err(e) if e.downcast_ref::<serde_json::Error>().is_some() => {
            tracing::error!(file = %prev.display(), "previous state file is corrupt too: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Writes `value` to `path` atomically (mode 0600: state files may name pods and leases).
///
/// # Errors
/// When the file or its directory cannot be written or synced.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    // Keep the current version as `.prev` (a hard link: no copy, no window without one).
    let prev = prev_path(path);
    let _ = std::fs::remove_file(&prev);
    if let Err(e) = std::fs::hard_link(path, &prev) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = %prev.display(), error = %e, "keeping the previous state file");
        }
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = std::env::temp_dir().join(format!("moat-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.json");
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), None);
        write_json(&p, &vec![1u32, 2]).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&p).unwrap(), Some(vec![1, 2]));
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&p, b"{").unwrap();
        assert!(read_json::<Vec<u32>>(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_or_deleted_file_is_recovered_from_the_previous_version() {
        let dir = std::env::temp_dir().join(format!("moat-persist-prev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("state.json");
        write_json(&p, &vec![1u32]).unwrap();
        write_json(&p, &vec![1u32, 2]).unwrap();
        std::fs::write(&p, b"{garbage").unwrap();
        assert_eq!(read_json_recovering::<Vec<u32>>(&p).unwrap(), Some(vec![1]));
        assert!(
            dir.join("state.json.corrupt").exists(),
            "the corrupt file is kept aside"
        );
        write_json(&p, &vec![3u32]).unwrap();
        write_json(&p, &vec![4u32]).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(read_json_recovering::<Vec<u32>>(&p).unwrap(), Some(vec![3]));
        std::fs::write(prev_path(&p), b"][").unwrap();
        assert_eq!(read_json_recovering::<Vec<u32>>(&p).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
