//! Machine code shared by content between loaded components.
//!
//! Components compiled from different bytes can hold byte-identical code:
//! every JS worker is the same StarlingMonkey engine with its own heap
//! image, so two JS workers loaded whole (as when a component does not split
//! into the shared template and its snapshot, see [`crate::snapshot`]) have
//! the same `.text` (about 21 MiB). Each is mapped from its own `.cwasm`
//! file, and the page cache does not merge equal pages of different files:
//! two different workers would hold their equal code twice, in every process
//! that loads them.
//!
//! [`CodeDir::share`] maps a freshly loaded component's whole pages of
//! `.text` from one file per distinct text instead: `code/<sha256>-<offset>`
//! under the compiled-code directory, a hard link to the first `.cwasm`
//! that held that text at that file offset. Every component with the same
//! code, in every process of the node, then maps the same file pages, so
//! the code is resident once however many workers run it. The mapping
//! replaces the component's own pages in place, with the same protection,
//! before any instance exists; the bytes are equal (checked by hash, and the
//! shared file's text re-hashed once per process), so wasmtime sees no
//! difference.
//!
//! A link whose `.cwasm` has been removed is the last name of that file; it
//! is removed when the directory is opened (a process that maps the file
//! keeps it; only the name goes). A process keeps each shared file it checked
//! open and maps only from that descriptor, so a name replaced later never
//! changes what it maps. Where hard links fail (another file system), the
//! process stops trying and each component maps its own code.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

/// The directory of shared code files (see the module docs).
#[derive(Debug)]
pub struct CodeDir {
    dir: PathBuf,
    /// Shared files whose text this process has hashed and found right, by
    /// name, kept open: code is mapped only from these.
    checked: Mutex<HashMap<String, Arc<File>>>,
    /// Set when a hard link failed: no sharing in this process.
    disabled: AtomicBool,
}

impl CodeDir {
    /// Opens (creating it) the shared-code directory `dir`, removing links
    /// no `.cwasm` shares any more.
    pub fn open(dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // Links a crashed process never renamed.
        warren_store::blobs::remove_stale_temporaries(&dir);
        for entry in std::fs::read_dir(&dir)?.flatten() {
            // A process mapping it keeps the file itself; only the name goes.
            if entry.metadata().is_ok_and(|m| m.nlink() <= 1) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(CodeDir {
            dir,
            checked: Mutex::new(HashMap::new()),
            disabled: AtomicBool::new(false),
        })
    }

    /// Maps `component`'s whole pages of code from the shared file for its
    /// text, making one if none exists yet (nothing to share when the code is
    /// under a page, not page-aligned in its file, or hard links fail here). `cwasm` is the file the
    /// component was loaded from with `Component::deserialize_file`, and no
    /// instance of the component may exist yet.
    pub fn share(&self, component: &Component, cwasm: &Path) -> anyhow::Result<()> {
        if self.disabled.load(Ordering::Relaxed) {
            return Ok(());
        }
        let page = page_size();
        let text = component.text();
        let image = component.image_range();
        let start = text.as_ptr() as usize;
        let len = text.len() / page * page;
        let Some(offset) = start.checked_sub(image.start as usize) else {
            bail!("the component's code is outside its image");
        };
        if len == 0 || !start.is_multiple_of(page) || !offset.is_multiple_of(page) {
            return Ok(());
        }
        let digest: [u8; 32] = Sha256::digest(text).into();
        let name = format!("{}-{offset:x}", hex::encode(digest));
        let file = self.shared_file(&name, cwasm, offset, text.len(), &digest)?;
        // SAFETY: `start..start + len` are whole pages of the component's
        // `.text`, inside the read-only file mapping wasmtime made in
        // `deserialize_file` and published as read+execute. They are replaced
        // by a private read+execute mapping of the same bytes: `file` holds
        // this exact text at `offset` (its SHA-256 was checked against the
        // name, as this text's was). No instance exists, so no code runs from
        // these pages while they are swapped, and wasmtime's later `munmap` of
        // its whole mapping covers this one too.
        let mapped = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if mapped == libc::MAP_FAILED {
            let error = std::io::Error::last_os_error();
            // A failed MAP_FIXED may already have unmapped the range: hold it
            // with an inaccessible mapping, so nothing else is placed there
            // before the caller drops the component (whose unmap covers it).
            // SAFETY: the same range as above, which the component owns.
            unsafe {
                libc::mmap(
                    start as *mut libc::c_void,
                    len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                );
            }
            bail!("mapping shared code over a component failed: {error}");
        }
        // This file's own copies of those pages are no longer mapped here;
        // let the kernel drop them from the page cache (unless it is the
        // shared file itself).
        let same_file = |a: &File, b: &File| match (a.metadata(), b.metadata()) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => true,
        };
        if let Ok(own) = File::open(cwasm)
            && !same_file(&own, &file)
        {
            // SAFETY: advice on an open descriptor; no memory is touched.
            unsafe {
                libc::posix_fadvise(
                    own.as_raw_fd(),
                    offset as libc::off_t,
                    len as libc::off_t,
                    libc::POSIX_FADV_DONTNEED,
                );
            }
        }
        Ok(())
    }

    /// The shared file `name` (text hash and offset): the one this process
    /// checked before, else the file under that name if it holds the code,
    /// else a new link to `cwasm` (checked before it takes the name).
    fn shared_file(
        &self,
        name: &str,
        cwasm: &Path,
        offset: usize,
        len: usize,
        digest: &[u8; 32],
    ) -> anyhow::Result<Arc<File>> {
        if let Some(file) = self.checked.lock().ok().and_then(|c| c.get(name).cloned()) {
            return Ok(file);
        }
        let path = self.dir.join(name);
        if let Ok(file) = File::open(&path) {
            if holds(&file, offset, len, digest)? {
                return Ok(self.keep(name, file));
            }
            tracing::warn!(file = %path.display(), "shared code file does not hold its code; replacing it");
        }
        // A unique temporary name, renamed over: other processes may be
        // making the same link.
        let tmp = self
            .dir
            .join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        if let Err(e) = std::fs::hard_link(cwasm, &tmp) {
            self.disabled.store(true, Ordering::Relaxed);
            tracing::warn!(error = %e, dir = %self.dir.display(), "no hard links here; machine code is not shared");
            bail!("linking {} for shared code: {e}", cwasm.display());
        }
        let file = File::open(&tmp);
        let checked = match &file {
            Ok(f) => holds(f, offset, len, digest),
            Err(_) => Ok(false),
        };
        if !matches!(checked, Ok(true)) {
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "{} no longer holds the code it was loaded with",
                cwasm.display()
            );
        }
        if let Err(e) = std::fs::rename(&tmp, &path) {
            // Still shared within this process, through the open file.
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(error = %e, file = %path.display(), "cannot name a shared code file");
        }
        Ok(self.keep(name, file?))
    }

    /// Remembers `file` as checked for `name`.
    fn keep(&self, name: &str, file: File) -> Arc<File> {
        let file = Arc::new(file);
        if let Ok(mut c) = self.checked.lock() {
            c.insert(name.to_owned(), file.clone());
        }
        file
    }
}

/// Whether `file` holds `len` bytes at `offset` with SHA-256 `digest`.
fn holds(mut file: &File, offset: usize, len: usize, digest: &[u8; 32]) -> anyhow::Result<bool> {
    if file.metadata()?.len() < (offset + len) as u64 {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(offset as u64))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = file.read(&mut buf[..left.min(1 << 20)])?;
        if n == 0 {
            return Ok(false);
        }
        h.update(&buf[..n]);
        left -= n;
    }
    Ok(h.finalize().as_slice() == digest.as_slice())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_whose_compiled_file_is_gone_is_removed_at_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let code = dir.path().join("code");
        std::fs::create_dir_all(&code).expect("mkdir");
        let cwasm = dir.path().join("a.cwasm");
        std::fs::write(&cwasm, b"compiled").expect("write");
        std::fs::hard_link(&cwasm, code.join("kept")).expect("link");
        std::fs::write(code.join("orphan"), b"compiled").expect("write");
        CodeDir::open(code.clone()).expect("open");
        assert!(code.join("kept").exists(), "its .cwasm still names it");
        assert!(!code.join("orphan").exists(), "nothing else names it");
    }
}
