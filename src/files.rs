//! Files on disk: atomic writes, the temporary files killed runs leave behind, and whether two
//! paths name the same file.

use std::path::Path;

pub use converse_convert::{temp_path, write_atomic};

/// Whether `a` and `b` name the same existing file, however spelled (relative or absolute,
/// through symbolic links, `./` and `..`).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// Whether process `pid` is running. Only answered where it can be known (Unix, through
/// `kill(pid, 0)`); elsewhere `None`.
fn process_alive(pid: u32) -> Option<bool> {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return Some(false);
        };
        // SAFETY: signal 0 sends nothing; it only checks that the process exists.
        let r = unsafe { libc::kill(pid, 0) };
        // EPERM: it exists but belongs to someone else.
        Some(r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        None
    }
}

/// Removes the temporary files [`write_atomic`] left in `dir` from runs that are no longer
/// running: a process killed by SIGKILL or Ctrl-C cannot clean up after itself. A file whose
/// process still runs, or whose process cannot be checked on this system, is left alone. Errors
/// are ignored.
pub fn remove_stale_temps(dir: &Path) {
    let dir = Some(dir)
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(converse_convert::temp_owner) else {
            continue;
        };
        if pid != std::process::id() && process_alive(pid) == Some(false) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_sees_through_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.pth");
        std::fs::write(&a, b"x").unwrap();
        let dotted = dir.path().join(".").join("a.pth");
        assert!(same_file(&a, &dotted));
        #[cfg(unix)]
        {
            let link = dir.path().join("link.pth");
            std::os::unix::fs::symlink(&a, &link).unwrap();
            assert!(same_file(&a, &link));
        }
        assert!(!same_file(&a, &dir.path().join("missing.pth")));
    }

    #[test]
    fn stale_temporary_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let own = temp_path(&dir.path().join("b.png"));
        let names = [".a.png.converse-4294967295.tmp", "c.png", ".d.tmp"];
        for n in names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        std::fs::write(&own, b"x").unwrap();
        remove_stale_temps(dir.path());
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [own, dir.path().join(".d.tmp"), dir.path().join("c.png")]
        );
    }

    /// Only the temporaries of processes that are gone are removed: ours stays, a running
    /// process's stays, a finished one's goes.
    #[cfg(unix)]
    #[test]
    fn stale_temporaries_of_finished_processes_only_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut done = std::process::Command::new("true").spawn().unwrap();
        let done_pid = done.id();
        done.wait().unwrap();
        let name = |pid: u32| dir.path().join(format!(".out.png.converse-{pid}.tmp"));
        for pid in [std::process::id(), child.id(), done_pid] {
            std::fs::write(name(pid), b"partial").unwrap();
        }
        let other = dir.path().join("keep.png");
        std::fs::write(&other, b"x").unwrap();
        remove_stale_temps(dir.path());
        assert!(name(std::process::id()).exists());
        assert!(
            name(child.id()).exists(),
            "a running process's temporary was removed"
        );
        assert!(!name(done_pid).exists());
        assert!(other.exists());
        child.kill().unwrap();
        child.wait().unwrap();
        remove_stale_temps(dir.path());
        assert!(!name(child.id()).exists());
    }
}
