//! Files on disk: the one write helper and its sweep (from `converse_convert::files`), and
//! reading only regular files.

pub use converse_convert::files::{
    append, is_destination_exists, is_temp_name, open_append, open_regular, read_regular, sweep,
    temp_files, write_bytes, write_with, DestinationExists, Existing,
};

/// Whether `e` (or an error it wraps) is [`DestinationExists`]: what [`write_with`] with
/// [`Existing::Keep`] reports when another run wrote the file first.
pub fn already_exists(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<DestinationExists>()
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(is_destination_exists)
    })
}

/// Sweeps ([`sweep`]) the folders `outputs` are written in, each once: the temporary files of
/// runs that were killed there.
pub fn sweep_folders<'a>(outputs: impl IntoIterator<Item = &'a std::path::Path>) {
    let mut seen = std::collections::BTreeSet::new();
    for out in outputs {
        let dir = out.parent().unwrap_or(std::path::Path::new(""));
        if seen.insert(dir.to_owned()) {
            sweep(dir);
        }
    }
}
