//! The one way this project writes a file: complete or not at all, never over another writer.
//!
//! [`write_with`] writes into a temporary file created exclusively, under an unpredictable name,
//! in the destination's folder, and holds an exclusive `flock` on it while it lives. The file is
//! flushed to disk (`fsync`), renamed to its destination, and the folder is flushed too. With
//! [`Existing::Keep`] the rename never replaces a file that appeared in the meantime
//! (`renameat2(RENAME_NOREPLACE)`, or `link` + `unlink` where the filesystem lacks it), so
//! concurrent runs never replace each other's outputs.
//!
//! A process killed while writing leaves its temporary file behind. [`sweep`] removes those, and
//! only those: a file it can lock has no live writer, on this host or any other sharing the
//! folder, since the writer's lock lasts as long as the writer.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// Whether the last step may replace a file found at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Never replace: a destination that exists when the file is complete is an
    /// [`io::ErrorKind::AlreadyExists`] error, and the new file is removed.
    Keep,
    /// Replace whatever is there (`--overwrite`).
    Replace,
}

impl Existing {
    /// [`Existing::Replace`] with `--overwrite`, else [`Existing::Keep`].
    pub fn with_overwrite(overwrite: bool) -> Self {
        if overwrite {
            Self::Replace
        } else {
            Self::Keep
        }
    }
}

/// The error [`write_with`] with [`Existing::Keep`] returns when the destination appeared while
/// the file was written (wrapped in an [`io::ErrorKind::AlreadyExists`] error): another writer
/// got there first. Other `AlreadyExists` errors (a folder that is a file) are not this.
#[derive(Debug)]
pub struct DestinationExists;

impl std::fmt::Display for DestinationExists {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the destination exists: another run wrote it meanwhile")
    }
}

impl std::error::Error for DestinationExists {}

/// Whether `e` is [`DestinationExists`].
pub fn is_destination_exists(e: &io::Error) -> bool {
    e.get_ref()
        .is_some_and(|inner| inner.is::<DestinationExists>())
}

fn destination_exists() -> io::Error {
    io::Error::new(io::ErrorKind::AlreadyExists, DestinationExists)
}

/// The marker every temporary name carries: `.HINT.converse-RANDOM.tmp`.
const MARK: &str = ".converse-";
const SUFFIX: &str = ".tmp";
/// Random characters in a temporary name.
const RANDOM: usize = 12;
/// Longest part of the destination's name repeated in a temporary name (in bytes), so that a
/// destination name at the filesystem's limit still has a temporary name within it.
const HINT: usize = 64;

/// Writes `dest`: `fill` writes the contents into the temporary file, which then becomes `dest`
/// as described in the [module docs](self). Missing parent folders are created. On any error
/// (including `fill`'s) nothing is left behind and `dest` is untouched.
pub fn write_with<T, E: From<io::Error>>(
    dest: &Path,
    existing: Existing,
    fill: impl FnOnce(&mut File) -> Result<T, E>,
) -> Result<T, E> {
    let name = dest
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    let dir = parent(dest);
    std::fs::create_dir_all(dir)?;
    let mut tmp = locked_temp(dir, &name.to_string_lossy())?;
    let value = fill(tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    match existing {
        Existing::Replace => tmp.persist(dest).map(drop).map_err(|e| e.error)?,
        Existing::Keep => persist_noclobber(tmp, dest)?,
    }
    sync_dir(dir)?;
    Ok(value)
}

/// [`write_with`] for bytes already in memory.
pub fn write_bytes(dest: &Path, existing: Existing, bytes: &[u8]) -> io::Result<()> {
    write_with(dest, existing, |f| io::Write::write_all(f, bytes))
}

/// Whether `file_name` is a temporary name of [`write_with`].
pub fn is_temp_name(file_name: &str) -> bool {
    let Some(rest) = file_name
        .strip_prefix('.')
        .and_then(|n| n.strip_suffix(SUFFIX))
    else {
        return false;
    };
    rest.rsplit_once(MARK).is_some_and(|(_, random)| {
        random.len() == RANDOM && random.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// Removes the temporary files in `dir` whose writers are gone (see the [module docs](self)),
/// and returns how many it removed. A file a live writer holds is never touched. Errors are
/// ignored: a sweep is a courtesy, never a reason to fail.
pub fn sweep(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(parent_or_dot(dir)) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        if !e.file_name().to_str().is_some_and(is_temp_name) {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_file()) && remove_if_unlocked(&e.path()) {
            removed += 1;
        }
    }
    removed
}

/// Opens the log `path` for appending, creating it (and its folders) if needed: the one way a
/// file grows instead of being written whole. Nothing in it is ever replaced.
pub fn open_append(path: &Path) -> io::Result<File> {
    std::fs::create_dir_all(parent(path))?;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
}

/// Appends `bytes` to a file from [`open_append`] in one `write` (so appends from several
/// processes never interleave within a record), then flushes it to disk.
pub fn append(file: &mut File, bytes: &[u8]) -> io::Result<()> {
    let n = io::Write::write(file, bytes)?;
    if n != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("a short write ({n} of {} bytes)", bytes.len()),
        ));
    }
    file.sync_data()
}

/// Opens `path` for reading if it is a regular file (links followed). A folder, device, FIFO or
/// socket is refused with an [`io::ErrorKind::InvalidInput`] error that says what it is, before
/// anything is read from it (a FIFO is opened without waiting for a writer).
pub fn open_regular(path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    let f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?
    };
    #[cfg(not(unix))]
    let f = File::open(path)?;
    let t = f.metadata()?.file_type();
    if t.is_file() {
        return Ok(f);
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file but {}", kind_of(&t)),
    ))
}

/// Reads a regular file ([`open_regular`]) of at most `max_bytes`.
pub fn read_regular(path: &Path, max_bytes: u64) -> io::Result<Vec<u8>> {
    let f = open_regular(path)?;
    let len = f.metadata()?.len();
    if len > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{len} bytes, over the limit of {max_bytes}"),
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    io::Read::read_to_end(&mut io::Read::take(f, max_bytes + 1), &mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("over the limit of {max_bytes} bytes"),
        ));
    }
    Ok(bytes)
}

/// What a file that is not a regular file is, in words.
fn kind_of(t: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a folder"
    } else {
        "a special file"
    }
}

/// The folder a destination is written in (`.` for a bare name).
fn parent(dest: &Path) -> &Path {
    parent_or_dot(dest.parent().unwrap_or(Path::new("")))
}

fn parent_or_dot(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

/// A new temporary file in `dir`, created exclusively and locked. A sweep that removed it
/// between its creation and the lock (it saw an unlocked file) is detected by the file having
/// no name left, and a new one is made.
fn locked_temp(dir: &Path, name: &str) -> io::Result<tempfile::NamedTempFile> {
    let mut cut = name.len().min(HINT);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let prefix = format!(".{}{MARK}", &name[..cut]);
    for _ in 0..8 {
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(SUFFIX)
            .rand_bytes(RANDOM)
            .permissions(mode_for_new_files())
            .tempfile_in(dir)?;
        match lock(tmp.as_file(), true) {
            Ok(()) => {}
            // No locks on this filesystem (NFS without lockd): no sweep can lock the file either,
            // so none removes it.
            Err(e) if no_locks(&e) => return Ok(tmp),
            Err(e) => return Err(e),
        }
        let still_named = match (
            std::fs::symlink_metadata(tmp.path()),
            tmp.as_file().metadata(),
        ) {
            (Ok(a), Ok(b)) => same_inode(&a, &b),
            _ => false,
        };
        if still_named {
            return Ok(tmp);
        }
    }
    Err(io::Error::other(
        "temporary files in this folder keep vanishing (is another process removing them?)",
    ))
}

/// Renames `tmp` to `dest` unless `dest` exists. Where the filesystem has neither
/// `RENAME_NOREPLACE` nor hard links (FAT through FUSE), it falls back to a check and a plain
/// rename, which a writer racing in between could still lose to.
fn persist_noclobber(tmp: tempfile::NamedTempFile, dest: &Path) -> io::Result<()> {
    match tmp.persist_noclobber(dest) {
        Ok(_) => Ok(()),
        Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Err(destination_exists()),
        Err(e) if unsupported(&e.error) => {
            if std::fs::symlink_metadata(dest).is_ok() {
                return Err(destination_exists());
            }
            e.file.persist(dest).map(drop).map_err(|e| e.error)
        }
        Err(e) => Err(e.error),
    }
}

/// Errors by which a filesystem says it has no file locks.
fn no_locks(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(e.raw_os_error(), Some(libc::ENOLCK | libc::ENOTSUP))
    }
    #[cfg(not(unix))]
    {
        e.kind() == io::ErrorKind::Unsupported
    }
}

/// Errors by which a filesystem says it cannot link or rename without replacing.
fn unsupported(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        matches!(
            e.raw_os_error(),
            Some(libc::EPERM | libc::ENOSYS | libc::EINVAL | libc::ENOTSUP | libc::EMLINK)
        )
    }
    #[cfg(not(unix))]
    {
        e.kind() == io::ErrorKind::Unsupported
    }
}

/// Flushes a folder's entries (a rename is durable only then). Filesystems that cannot flush a
/// folder (some FUSE ones) say so with `EINVAL`; that is not an error.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        match File::open(dir).and_then(|d| d.sync_all()) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP)) => Ok(()),
            r => r,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// `path` removed if no writer holds it, as seen through an exclusive lock taken without
/// waiting. Reports whether it was removed.
fn remove_if_unlocked(path: &Path) -> bool {
    let Ok(f) = open_no_follow(path) else {
        return false;
    };
    if lock(&f, false).is_err() {
        return false;
    }
    // The writer may have renamed it to its destination between our open and our lock: remove
    // only what still stands under this name.
    let same = match (std::fs::symlink_metadata(path), f.metadata()) {
        (Ok(a), Ok(b)) => same_inode(&a, &b),
        _ => false,
    };
    same && std::fs::remove_file(path).is_ok()
}

#[cfg(unix)]
fn open_no_follow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Open for writing: NFS turns flock into byte-range locks, and an exclusive one needs it.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

#[cfg(not(unix))]
fn open_no_follow(path: &Path) -> io::Result<File> {
    File::open(path)
}

/// An exclusive `flock`, waiting for it or not.
#[cfg(unix)]
fn lock(f: &File, wait: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        // SAFETY: flock on a descriptor this File owns; no memory is passed.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(not(unix))]
fn lock(_: &File, _: bool) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn same_inode(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_inode(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    true
}

/// New files get the usual permissions (0666 less the umask), not a temporary file's 0600.
#[cfg(unix)]
fn mode_for_new_files() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o666)
}

#[cfg(not(unix))]
fn mode_for_new_files() -> std::fs::Permissions {
    std::fs::metadata(".").map(|m| m.permissions()).unwrap()
}

/// The temporary files [`write_with`] would sweep in `dir` (for tests and reports).
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(parent_or_dot(dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(is_temp_name))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/a.png");
        write_bytes(&dest, Existing::Keep, b"one").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"one");
        assert_eq!(names(&dir.path().join("sub")), ["a.png"]);
        // Keep never replaces; Replace does.
        let e = write_bytes(&dest, Existing::Keep, b"two").unwrap_err();
        assert!(is_destination_exists(&e), "{e}");
        // A folder in the way that is a file is another error.
        let e = write_bytes(&dest.join("c.png"), Existing::Keep, b"x").unwrap_err();
        assert!(!is_destination_exists(&e), "{e}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"one");
        write_bytes(&dest, Existing::Replace, b"two").unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");
        assert_eq!(names(&dir.path().join("sub")), ["a.png"]);
    }

    #[test]
    fn a_failing_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.png");
        let r: Result<(), io::Error> = write_with(&dest, Existing::Replace, |f| {
            io::Write::write_all(f, b"partial")?;
            Err(io::Error::other("encoder failed"))
        });
        assert_eq!(r.unwrap_err().to_string(), "encoder failed");
        assert!(names(dir.path()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn new_files_get_the_usual_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.png");
        write_bytes(&dest, Existing::Keep, b"x").unwrap();
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        // SAFETY: umask only reads and sets this process's mask; set back at once.
        let umask = unsafe {
            let m = libc::umask(0o022);
            libc::umask(m);
            m
        };
        assert_eq!(mode, 0o666 & !(umask as u32));
    }

    #[test]
    fn temporary_names_fit_beside_a_name_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}.png", "é".repeat(125)); // 254 bytes
        let dest = dir.path().join(&long);
        write_bytes(&dest, Existing::Keep, b"x").unwrap();
        assert_eq!(names(dir.path()), [long]);
        let tmp = locked_temp(dir.path(), &"é".repeat(125)).unwrap();
        let n = tmp.path().file_name().unwrap().to_str().unwrap().to_owned();
        assert!(n.len() <= 1 + HINT + MARK.len() + RANDOM + SUFFIX.len());
        assert!(is_temp_name(&n), "{n}");
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_regular(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file but a character device");
        let e = open_regular(dir.path()).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file but a folder");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_regular(&fifo).unwrap_err();
        assert_eq!(e.to_string(), "not a regular file but a FIFO (named pipe)");
        let f = dir.path().join("f");
        std::fs::write(&f, b"12345").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap(), b"12345");
        let e = read_regular(&f, 4).unwrap_err();
        assert_eq!(e.to_string(), "5 bytes, over the limit of 4");
    }

    #[test]
    fn temporary_names_are_recognised() {
        assert!(is_temp_name(".a.png.converse-AbC123xyz789.tmp"));
        assert!(!is_temp_name(".a.png.converse-123.tmp"));
        assert!(!is_temp_name("a.png.converse-AbC123xyz789.tmp"));
        assert!(!is_temp_name(".a.png.converse-AbC123xyz789.part"));
        assert!(!is_temp_name(".a.png.converse-AbC123xyz7-9.tmp"));
    }

    /// A live writer's temporary file survives a sweep, whoever sweeps; a dead writer's goes.
    #[cfg(unix)]
    #[test]
    fn sweeps_remove_only_files_no_writer_holds() {
        let dir = tempfile::tempdir().unwrap();
        let live = locked_temp(dir.path(), "live.png").unwrap();
        let dead = locked_temp(dir.path(), "dead.png").unwrap();
        let (dead_file, dead_path) = dead.keep().unwrap();
        drop(dead_file); // the writer is gone: its lock with it
        std::fs::write(dir.path().join(".other.tmp"), b"not ours").unwrap();
        std::fs::write(dir.path().join("a.png"), b"an output").unwrap();
        assert_eq!(sweep(dir.path()), 1);
        assert!(live.path().exists(), "a live writer's file was removed");
        assert!(!dead_path.exists());
        assert!(dir.path().join(".other.tmp").exists());
        // Another process cannot take it either: a child sweeping the same folder.
        let status = std::process::Command::new("flock")
            .args(["-n", "-x"])
            .arg(live.path())
            .arg("true")
            .status();
        if let Ok(s) = status {
            assert!(!s.success(), "another process could lock a live temporary");
        }
        drop(live);
        assert_eq!(temp_files(dir.path()), Vec::<PathBuf>::new());
    }

    /// Many threads writing the same destination without replacing: exactly one wins, every
    /// other is told it exists, and the file is one writer's whole content.
    #[test]
    fn concurrent_writers_never_replace_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.bin");
        let results: Vec<io::Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| {
                    let dest = &dest;
                    s.spawn(move || write_bytes(dest, Existing::Keep, &[i; 100_000]))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<usize> = (0..8).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        for r in &results {
            if let Err(e) = r {
                assert!(is_destination_exists(e), "{e}");
            }
        }
        assert_eq!(std::fs::read(&dest).unwrap(), vec![won[0] as u8; 100_000]);
        assert_eq!(names(dir.path()), ["a.bin"]);
    }
}
