//! The state directory as untrusted input: every access goes through a directory
//! descriptor and never follows a link.
//!
//! Sites run pilots as a service account that owns the state directory, while `recover`,
//! `status`, `kill-all`, the epilog and the units run as root over that same directory
//! (docs/security.md). So whatever root finds there may have been put there by the pilot
//! account: a symlink to `/etc/shadow` named `node.lock`, a FIFO named like a record, a
//! sparse 100 GiB "record", a hard link to a root-owned file. A [`SafeDir`] is opened once
//! (the last component without following a symlink) and then used only relative to its
//! descriptor, one name at a time:
//!
//! - names are single components (no `/`, `.` or `..`), so nothing resolves outside;
//! - every open uses `O_NOFOLLOW` and `O_NONBLOCK` (a FIFO never blocks) and is checked
//!   with `fstat` on the opened descriptor: a regular file with one link, owned by root,
//!   by the directory's owner or by us, no larger than the caller's cap;
//! - a write creates a fresh temp file (`O_EXCL`) and renames it over the name, so root
//!   never writes into an inode someone else prepared; the one in-place write (a lock
//!   file naming its holder) happens only after those checks;
//! - what root creates in a directory owned by the pilot account is given to that account
//!   (`fchown` on the new descriptor), so the pilot can go on using it.
//!
//! These rules hold for every user: a pilot running as the account gets the same checks.

use std::ffi::CStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};

/// What makes an entry of the state directory unsafe to use. Carried inside an
/// `io::Error` (kind `InvalidData`) so the callers' error types keep their one `source`.
#[derive(Debug, thiserror::Error)]
pub enum Unsafe {
    /// A name that is not one plain path component.
    #[error("{0:?} is not a plain file name")]
    Name(String),
    /// A symlink, FIFO, socket, device or directory where a file was expected (or the
    /// reverse).
    #[error("{path} is a {found}, not a {wanted}; it was not opened")]
    Kind {
        /// The entry.
        path: PathBuf,
        /// What was expected.
        wanted: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// Owned by a user other than root, the directory's owner or this process.
    #[error(
        "{path} is owned by uid {uid}, not by root or the state directory's owner (uid {owner})"
    )]
    Owner {
        /// The entry.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// The directory's owner.
        owner: u32,
    },
    /// A file with more than one hard link: it may be another file seen through this name.
    #[error("{path} has {links} hard links; a state file has one")]
    Links {
        /// The entry.
        path: PathBuf,
        /// Its link count.
        links: u64,
    },
    /// Larger than any file vmpilot writes there.
    #[error("{path} is {size} bytes, more than the {cap} a file of its kind may be")]
    Size {
        /// The entry.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// A directory with more entries than vmpilot ever makes.
    #[error("{path} has more than {cap} entries")]
    Entries {
        /// The directory.
        path: PathBuf,
        /// The cap.
        cap: usize,
    },
}

impl Unsafe {
    fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }
}

/// What to do about a write into the state directory that failed with `e`: the hint every
/// "cannot write" error of the state directory carries (disk full, quota, read-only...).
pub fn write_hint(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => {
            "free space (or quota) on the file system that holds the state directory, then run the command again"
        }
        ErrorKind::ReadOnlyFilesystem => {
            "the file system that holds the state directory is read-only: remount it read-write or set `state_dir` to a writable directory"
        }
        ErrorKind::PermissionDenied => {
            "run as root or as the state directory's owner, or set `state_dir` (or --state-dir) to a directory this user owns"
        }
        _ => "check the file system that holds the state directory (`dmesg`, `df -h`)",
    }
}

/// Is this I/O error one of ours (an unsafe entry), as opposed to the OS's?
pub fn is_unsafe(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<Unsafe>())
}

/// A directory opened once and used only through its descriptor (see the module doc).
#[derive(Debug, Clone)]
pub struct SafeDir {
    fd: Arc<OwnedFd>,
    path: PathBuf,
    /// The owner of the directory: whose files are trusted besides root's and ours.
    owner: u32,
}

/// One entry of a directory listing: its name (only names that are UTF-8) and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file name.
    pub name: String,
    /// A regular file (as the directory reports it; opening checks again).
    pub is_file: bool,
}

fn io(e: rustix::io::Errno) -> std::io::Error {
    e.into()
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symlink",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "file of unknown kind",
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Check that `name` is one plain path component.
fn check_name(name: &str) -> std::io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0']);
    if ok {
        Ok(())
    } else {
        Err(Unsafe::Name(name.to_string()).into_io())
    }
}

/// The O_NOFOLLOW open of a symlink fails with ELOOP (or ENOTDIR for O_DIRECTORY):
/// say what it is instead.
fn explain_open_error(
    dir: &SafeDir,
    name: &str,
    e: rustix::io::Errno,
    wanted: &'static str,
) -> std::io::Error {
    if matches!(e, rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR)
        && let Ok(st) = rustix::fs::statat(&*dir.fd, name, AtFlags::SYMLINK_NOFOLLOW)
    {
        return Unsafe::Kind {
            path: dir.join(name),
            wanted,
            found: kind_name(FileType::from_raw_mode(st.st_mode)),
        }
        .into_io();
    }
    io(e)
}

impl SafeDir {
    /// Open (creating 0700 with its parents if missing) the directory at `path`, the
    /// state directory named by root-owned configuration. Its last component must not be
    /// a symlink. If others can write to it and it is ours, it is tightened to 0700.
    pub fn open(path: &Path) -> std::io::Result<SafeDir> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io(e)),
        }
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            if matches!(e, rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) {
                Unsafe::Kind {
                    path: path.to_path_buf(),
                    wanted: "directory",
                    found: "symlink or file",
                }
                .into_io()
            } else {
                io(e)
            }
        })?;
        let st = rustix::fs::fstat(&fd).map_err(io)?;
        let dir = SafeDir {
            fd: Arc::new(fd),
            path: path.to_path_buf(),
            owner: st.st_uid,
        };
        dir.tighten(&st)?;
        Ok(dir)
    }

    /// Make the directory 0700 if group or others may write to it and we may change it.
    fn tighten(&self, st: &Stat) -> std::io::Result<()> {
        let mode = st.st_mode & 0o7777;
        if mode & 0o022 != 0 && (st.st_uid == euid() || euid() == 0) {
            rustix::fs::fchmod(&*self.fd, Mode::from_raw_mode(mode & 0o700)).map_err(io)?;
        }
        Ok(())
    }

    /// The directory's path (for messages only: nothing is opened through it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of an entry (for messages only).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The uid that owns the directory.
    pub fn owner(&self) -> u32 {
        self.owner
    }

    /// Is a file owned by `uid` trusted here: root, the directory's owner, or us.
    fn trusted_owner(&self, uid: u32) -> bool {
        uid == 0 || uid == self.owner || uid == euid()
    }

    /// Check what was opened as `name`: the kind wanted, a trusted owner, one link, and
    /// (for files) at most `cap` bytes.
    fn check(&self, name: &str, st: &Stat, want: FileType, cap: u64) -> std::io::Result<()> {
        let path = || self.join(name);
        let found = FileType::from_raw_mode(st.st_mode);
        if found != want {
            return Err(Unsafe::Kind {
                path: path(),
                wanted: kind_name(want),
                found: kind_name(found),
            }
            .into_io());
        }
        if !self.trusted_owner(st.st_uid) {
            return Err(Unsafe::Owner {
                path: path(),
                uid: st.st_uid,
                owner: self.owner,
            }
            .into_io());
        }
        if want == FileType::RegularFile {
            let links = st.st_nlink;
            if links != 1 {
                return Err(Unsafe::Links {
                    path: path(),
                    links,
                }
                .into_io());
            }
            let size = st.st_size.max(0) as u64;
            if size > cap {
                return Err(Unsafe::Size {
                    path: path(),
                    size,
                    cap,
                }
                .into_io());
            }
        }
        Ok(())
    }

    /// Give what root just created in a directory owned by another account to that
    /// account, so the pilot can keep using it.
    fn hand_over(&self, fd: impl AsFd) -> std::io::Result<()> {
        if euid() == 0 && self.owner != 0 {
            let uid = rustix::fs::Uid::from_raw(self.owner);
            rustix::fs::fchown(fd, Some(uid), None).map_err(io)?;
        }
        Ok(())
    }

    /// Open (creating 0700 if missing) the subdirectory `name`.
    pub fn subdir(&self, name: &str) -> std::io::Result<SafeDir> {
        check_name(name)?;
        let created = match rustix::fs::mkdirat(&*self.fd, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => true,
            Err(rustix::io::Errno::EXIST) => false,
            Err(e) => return Err(io(e)),
        };
        let fd = rustix::fs::openat(
            &*self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| explain_open_error(self, name, e, "directory"))?;
        if created {
            self.hand_over(&fd)?;
        }
        let st = rustix::fs::fstat(&fd).map_err(io)?;
        self.check(name, &st, FileType::Directory, 0)?;
        let dir = SafeDir {
            fd: Arc::new(fd),
            path: self.join(name),
            owner: self.owner,
        };
        dir.tighten(&st)?;
        Ok(dir)
    }

    /// Open an existing file for reading, checked; None if there is none.
    fn open_existing(&self, name: &str, cap: u64) -> std::io::Result<Option<File>> {
        check_name(name)?;
        let fd = match rustix::fs::openat(
            &*self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(explain_open_error(self, name, e, "regular file")),
        };
        let st = rustix::fs::fstat(&fd).map_err(io)?;
        self.check(name, &st, FileType::RegularFile, cap)?;
        Ok(Some(File::from(fd)))
    }

    /// Read the file `name` whole; None if there is none. Refused (an [`Unsafe`] error)
    /// unless it is a trusted regular file of at most `cap` bytes.
    pub fn read(&self, name: &str, cap: u64) -> std::io::Result<Option<Vec<u8>>> {
        let Some(file) = self.open_existing(name, cap)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        // The size was checked; a file that grows meanwhile is still read only to the cap.
        file.take(cap + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > cap {
            return Err(Unsafe::Size {
                path: self.join(name),
                size: bytes.len() as u64,
                cap,
            }
            .into_io());
        }
        Ok(Some(bytes))
    }

    /// Atomically and durably replace `name` with `bytes` (mode 0600): a fresh temp file
    /// (`O_EXCL`), fsync, rename over the name, fsync the directory. Whatever was at the
    /// name (even a symlink) is replaced, never written through.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.replace(name, bytes, true)
    }

    /// [`SafeDir::write_atomic`] for a file only its writer may own (the kill request,
    /// which counts only when root wrote it): never handed over to the directory's owner.
    pub fn write_atomic_unshared(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.replace(name, bytes, false)
    }

    fn replace(&self, name: &str, bytes: &[u8], share: bool) -> std::io::Result<()> {
        check_name(name)?;
        let (tmp_name, fd) = loop {
            let tmp_name = format!(".tmp-{}-{:016x}", name, rand::random::<u64>());
            let tmp_name: String = tmp_name.chars().take(255).collect();
            match rustix::fs::openat(
                &*self.fd,
                tmp_name.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => break (tmp_name, fd),
                Err(rustix::io::Errno::EXIST) => continue,
                Err(e) => return Err(io(e)),
            }
        };
        let result = (|| {
            if share {
                self.hand_over(&fd)?;
            }
            let mut file = File::from(fd);
            file.write_all(bytes)?;
            file.sync_all()?;
            rustix::fs::renameat(&*self.fd, tmp_name.as_str(), &*self.fd, name).map_err(io)?;
            self.sync()
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&*self.fd, tmp_name.as_str(), AtFlags::empty());
        }
        result
    }

    /// Open (creating 0600 if missing) the file `name` for reading and writing in place,
    /// checked as [`SafeDir::read`] does: for lock files, which must keep their inode.
    pub fn open_lock(&self, name: &str, cap: u64) -> std::io::Result<File> {
        self.open_writable(name, cap, false)
    }

    /// Open (creating 0600 if missing) the file `name` for appending, checked (a log).
    pub fn open_append(&self, name: &str, cap: u64) -> std::io::Result<File> {
        self.open_writable(name, cap, true)
    }

    fn open_writable(&self, name: &str, cap: u64, append: bool) -> std::io::Result<File> {
        check_name(name)?;
        let mut flags =
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        if append {
            flags |= OFlags::APPEND;
        }
        // Created now (O_EXCL succeeded) or opened existing: tell the two apart, so only
        // what we created is handed over.
        let (fd, created) = match rustix::fs::openat(
            &*self.fd,
            name,
            flags | OFlags::EXCL,
            Mode::from_raw_mode(0o600),
        ) {
            Ok(fd) => (fd, true),
            Err(rustix::io::Errno::EXIST) => (
                rustix::fs::openat(&*self.fd, name, flags, Mode::from_raw_mode(0o600))
                    .map_err(|e| explain_open_error(self, name, e, "regular file"))?,
                false,
            ),
            Err(e) => return Err(explain_open_error(self, name, e, "regular file")),
        };
        if created {
            self.hand_over(&fd)?;
        }
        let st = rustix::fs::fstat(&fd).map_err(io)?;
        self.check(name, &st, FileType::RegularFile, cap)?;
        Ok(File::from(fd))
    }

    /// Remove the file `name`; false if there was none. Removing never follows a link.
    pub fn remove(&self, name: &str) -> std::io::Result<bool> {
        check_name(name)?;
        match rustix::fs::unlinkat(&*self.fd, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(io(e)),
        }
    }

    /// Move the entry `name` to `to_name` in directory `to`, durably.
    pub fn rename_to(&self, name: &str, to: &SafeDir, to_name: &str) -> std::io::Result<()> {
        check_name(name)?;
        check_name(to_name)?;
        rustix::fs::renameat(&*self.fd, name, &*to.fd, to_name).map_err(io)?;
        to.sync()?;
        self.sync()
    }

    /// When the entry `name` was last modified (the entry itself, never a link's target).
    pub fn modified(&self, name: &str) -> std::io::Result<std::time::SystemTime> {
        check_name(name)?;
        let st = rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW).map_err(io)?;
        let secs = st.st_mtime.max(0) as u64;
        Ok(std::time::UNIX_EPOCH + std::time::Duration::new(secs, st.st_mtime_nsec as u32))
    }

    /// The uid that owns the entry `name` (never a link's target), if it exists.
    pub fn owner_of(&self, name: &str) -> Option<u32> {
        check_name(name).ok()?;
        rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| st.st_uid)
    }

    /// `(device, inode)` of the regular file `name` (never a link's target), to recognise
    /// it open in another process.
    pub fn file_id(&self, name: &str) -> Option<(u64, u64)> {
        check_name(name).ok()?;
        let st = rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile)
            .then_some((st.st_dev as u64, st.st_ino as u64))
    }

    /// Does the entry `name` exist (of any kind)?
    pub fn exists(&self, name: &str) -> bool {
        check_name(name).is_ok()
            && rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// The entries of the directory, at most `cap` of them (more is an error: nothing
    /// vmpilot writes comes close). Names that are not UTF-8 are skipped, with their
    /// count, so the caller can say so.
    pub fn entries(&self, cap: usize) -> std::io::Result<(Vec<Entry>, usize)> {
        let fd = rustix::fs::openat(
            &*self.fd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(io)?;
        let mut dir = rustix::fs::Dir::new(fd).map_err(io)?;
        let mut entries = Vec::new();
        let mut not_utf8 = 0;
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(io)?;
            let name: &CStr = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            if entries.len() + not_utf8 >= cap {
                return Err(Unsafe::Entries {
                    path: self.path.clone(),
                    cap,
                }
                .into_io());
            }
            match std::str::from_utf8(bytes) {
                Ok(s) => entries.push(Entry {
                    name: s.to_string(),
                    is_file: entry.file_type() == FileType::RegularFile,
                }),
                Err(_) => not_utf8 += 1,
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((entries, not_utf8))
    }

    /// fsync the directory so that renames and unlinks in it are durable.
    pub fn sync(&self) -> std::io::Result<()> {
        rustix::fs::fsync(&*self.fd).map_err(io)
    }
}

/// Quote a string that came from a file someone else may write, for a log line or a
/// message: newlines, control characters and quotes are escaped, and it is cut to `max`
/// characters, so it can neither forge a log line nor flood one.
pub fn quoted(untrusted: &str, max: usize) -> String {
    let cut: String = untrusted.chars().take(max).collect();
    let more = if untrusted.chars().count() > max {
        "…"
    } else {
        ""
    };
    format!("{cut:?}{more}")
}

/// An untrusted string for a table cell or a message where quotes would be noise: control
/// characters (newlines, terminal escapes) are escaped as `\u{..}`, the rest kept, cut to
/// `max` characters.
pub fn printable(untrusted: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in untrusted.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> (tempfile::TempDir, SafeDir) {
        let t = tempfile::tempdir().unwrap();
        let d = SafeDir::open(&t.path().join("state")).unwrap();
        (t, d)
    }

    #[test]
    fn write_read_replace_remove() {
        let (_t, d) = dir();
        assert_eq!(d.read("a.json", 10).unwrap(), None);
        d.write_atomic("a.json", b"one").unwrap();
        d.write_atomic("a.json", b"two").unwrap();
        assert_eq!(d.read("a.json", 10).unwrap().unwrap(), b"two");
        let mode = std::fs::metadata(d.join("a.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (entries, _) = d.entries(10).unwrap();
        assert_eq!(entries.len(), 1, "no temp file left: {entries:?}");
        assert!(d.remove("a.json").unwrap());
        assert!(!d.remove("a.json").unwrap());
    }

    #[test]
    fn a_symlink_is_never_followed_and_a_write_replaces_it() {
        let (t, d) = dir();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, d.join("node.lock")).unwrap();
        let e = d.read("node.lock", 100).unwrap_err();
        assert!(is_unsafe(&e), "{e}");
        assert!(e.to_string().contains("symlink"), "{e}");
        let e = d.open_lock("node.lock", 100).unwrap_err();
        assert!(is_unsafe(&e), "{e}");
        let e = d.open_append("node.lock", 100).unwrap_err();
        assert!(is_unsafe(&e), "{e}");
        d.write_atomic("node.lock", b"mine").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn fifos_big_files_hard_links_and_bad_names_are_refused_without_blocking() {
        let (t, d) = dir();
        nix::unistd::mkfifo(&d.join("fifo.json"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = d.read("fifo.json", 100).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = d.open_lock("fifo.json", 100).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let big = File::create(d.join("big.json")).unwrap();
        big.set_len(1 << 40).unwrap();
        let e = d.read("big.json", 1 << 20).unwrap_err();
        assert!(matches!(
            e.get_ref().unwrap().downcast_ref(),
            Some(Unsafe::Size { .. })
        ));
        let outside = t.path().join("outside");
        std::fs::write(&outside, "x").unwrap();
        std::fs::hard_link(&outside, d.join("linked.json")).unwrap();
        let e = d.read("linked.json", 100).unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(is_unsafe(&d.read(bad, 10).unwrap_err()), "{bad:?}");
        }
        let sub = d.subdir("leases").unwrap();
        std::os::unix::fs::symlink(t.path(), d.join("spool")).unwrap();
        assert!(is_unsafe(&d.subdir("spool").unwrap_err()));
        assert_eq!(sub.entries(10).unwrap().0, vec![]);
    }

    #[test]
    fn a_state_dir_that_is_a_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("real")).unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join("state")).unwrap();
        let e = SafeDir::open(&t.path().join("state")).unwrap_err();
        assert!(is_unsafe(&e), "{e}");
    }

    #[test]
    fn a_writable_state_dir_is_tightened() {
        let (_t, d) = dir();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let d = SafeDir::open(d.path()).unwrap();
        let mode = std::fs::metadata(d.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn listing_is_capped() {
        let (_t, d) = dir();
        for i in 0..5 {
            d.write_atomic(&format!("{i}.json"), b"{}").unwrap();
        }
        assert_eq!(d.entries(5).unwrap().0.len(), 5);
        assert!(is_unsafe(&d.entries(4).unwrap_err()));
    }

    #[test]
    fn quoting_escapes_newlines_and_cuts() {
        assert_eq!(quoted("a\nb", 10), "\"a\\nb\"");
        assert_eq!(quoted("abcdef", 3), "\"abc\"…");
        assert_eq!(printable("job\x1b[2J\n1", 20), "job\\u{1b}[2J\\u{a}1");
        assert_eq!(printable("abcdef", 3), "abc…");
    }
}
