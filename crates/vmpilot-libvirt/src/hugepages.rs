//! The kernel's pool of 2 MiB hugepages (`/proc/sys/vm/nr_hugepages`), grown for a lease and
//! shrunk back after it.
//!
//! The kernel may give fewer pages than asked (fragmented memory) and may keep pages that
//! are still in use when asked to shrink, silently in both cases: the only proof is reading
//! the file back. So every change is written, read back and compared; a partial grow is
//! rolled back to the exact value before it. The path is injected so tests use a plain file.

use std::path::Path;

/// Size of one pool page, MiB (x86-64 default hugepage size).
pub const PAGE_MIB: u64 = 2;

/// Pages needed for `mib` of guest memory (rounded up).
pub fn pages_for(mib: u64) -> u64 {
    mib.div_ceil(PAGE_MIB)
}

/// The pool size now.
pub fn read(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{} holds `{}`, not a number", path.display(), text.trim()))
}

/// Ask for `pages` and return what the kernel then reports.
pub fn set(path: &Path, pages: u64) -> Result<u64, String> {
    std::fs::write(path, format!("{pages}\n"))
        .map_err(|e| format!("cannot write {pages} to {}: {e}", path.display()))?;
    read(path)
}

/// Grow the pool from `before` by `add` pages; on a partial grow, restore `before` and say
/// how many pages the kernel gave.
pub fn grow(path: &Path, before: u64, add: u64) -> Result<(), String> {
    let want = before.checked_add(add).ok_or_else(|| {
        format!(
            "{} holds {before} pages; {add} more is more than the kernel can count",
            path.display()
        )
    })?;
    let got = match set(path, want) {
        Ok(got) if got == want => return Ok(()),
        Ok(got) => got,
        Err(e) => {
            // The write itself failed; make sure nothing half-happened.
            return match set(path, before) {
                Ok(back) if back == before => Err(e),
                Ok(back) => Err(format!(
                    "{e}; rolling back left {back} pages instead of {before}"
                )),
                Err(e2) => Err(format!("{e}; rolling back failed too: {e2}")),
            };
        }
    };
    let gave = got.saturating_sub(before);
    let rollback = match set(path, before) {
        Ok(back) if back == before => format!("rolled back to {before}"),
        Ok(back) => format!("rolling back left {back} instead of {before}"),
        Err(e) => format!("rolling back failed: {e}"),
    };
    Err(format!(
        "the kernel gave {gave} of {add} hugepages of {PAGE_MIB} MiB ({} reads {got}, {want} wanted); {rollback}\n\n\
         hint: memory is too fragmented for a runtime grow; reserve hugepages at boot (kernel argument \
         hugepages=N) or set [host.libvirt] hugepages = false",
        path.display()
    ))
}

/// Shrink (or set) the pool to exactly `target`.
pub fn restore(path: &Path, target: u64) -> Result<(), String> {
    let got = set(path, target)?;
    if got == target {
        Ok(())
    } else {
        Err(format!(
            "{} reads {got} after writing {target}: hugepages are probably still in use by a guest\n\n\
             hint: stop the guests using hugepages, then run `vmpilot recover`",
            path.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_up() {
        assert_eq!(pages_for(1024), 512);
        assert_eq!(pages_for(1025), 513);
        assert_eq!(pages_for(0), 0);
    }

    #[test]
    fn grow_and_restore_on_a_plain_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nr_hugepages");
        std::fs::write(&p, "7\n").unwrap();
        grow(&p, 7, 100).unwrap();
        assert_eq!(read(&p).unwrap(), 107);
        restore(&p, 7).unwrap();
        assert_eq!(read(&p).unwrap(), 7);
    }

    #[test]
    fn failures_name_the_file_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be written: the grow fails and says where.
        let e = grow(dir.path(), 0, 10).unwrap_err();
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        let p = dir.path().join("garbage");
        std::fs::write(&p, "many").unwrap();
        assert!(read(&p).unwrap_err().contains("not a number"));
    }
}
