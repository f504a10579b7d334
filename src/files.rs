//! Files on disk: the one write helper and its sweep (from `converse_convert::files`), and
//! reading only regular files.

pub use converse_convert::files::{
    is_temp_name, open_regular, read_regular, sweep, temp_files, write_bytes, write_with, Existing,
};

/// Whether `e` (or an error it wraps) says the destination exists: what [`write_with`] with
/// [`Existing::Keep`] reports when another run wrote the file first.
pub fn already_exists(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AlreadyExists)
    })
}
