//! A deterministic initramfs: `newc` cpio with sorted paths, fixed timestamps, owners root,
//! explicit modes, sequential inode numbers; every parent directory present.

use std::collections::BTreeMap;

use crate::ImageError;

/// What a path is.
#[derive(Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file.
    File(Vec<u8>),
    /// A symbolic link to the target.
    Symlink(String),
    /// A character device (major, minor).
    CharDev(u32, u32),
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Dir => write!(f, "Dir"),
            Node::File(d) => write!(f, "File({} bytes)", d.len()),
            Node::Symlink(t) => write!(f, "Symlink({t})"),
            Node::CharDev(a, b) => write!(f, "CharDev({a}, {b})"),
        }
    }
}

/// The tree of an initramfs, built up then written once.
#[derive(Debug, Default)]
pub struct Tree {
    nodes: BTreeMap<String, (Node, u32)>,
}

impl Tree {
    /// Add a node with permission bits. Parents are added as 0755 directories. Adding a path
    /// twice with different contents is an error.
    pub fn add(&mut self, path: &str, node: Node, perm: u32) -> Result<(), ImageError> {
        let p = path.trim_start_matches('/').trim_end_matches('/');
        if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(ImageError::Build(format!(
                "initramfs path {path:?} is not clean"
            )));
        }
        let mut parent = String::new();
        let comps: Vec<&str> = p.split('/').collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            match self.nodes.get(&parent) {
                None => {
                    self.nodes.insert(parent.clone(), (Node::Dir, 0o755));
                }
                Some((Node::Dir, _)) => {}
                Some(_) => {
                    return Err(ImageError::Build(format!(
                        "initramfs: {parent} is not a directory (adding {p})"
                    )))
                }
            }
        }
        match self.nodes.get(p) {
            Some((existing, m)) if *existing == node && *m == perm & 0o7777 => Ok(()),
            Some((Node::Dir, _)) if node == Node::Dir => Ok(()),
            Some(_) => Err(ImageError::Build(format!(
                "initramfs: {p} added twice with different contents"
            ))),
            None => {
                self.nodes.insert(p.to_string(), (node, perm & 0o7777));
                Ok(())
            }
        }
    }

    /// Paths and nodes, sorted.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Node, u32)> {
        self.nodes.iter().map(|(p, (n, m))| (p, n, *m))
    }

    /// The `newc` archive. `mtime` is every entry's timestamp.
    pub fn to_newc(&self, mtime: u64) -> Result<Vec<u8>, ImageError> {
        let mtime = u32::try_from(mtime)
            .map_err(|_| ImageError::Build("SOURCE_DATE_EPOCH beyond 2106".into()))?;
        let mut out = Vec::new();
        for (ino, (path, (node, perm))) in self.nodes.iter().enumerate() {
            let (kind, data, nlink, rdev): (u32, &[u8], u32, (u32, u32)) = match node {
                Node::Dir => (0o040000, &[], 2, (0, 0)),
                Node::File(d) => (0o100000, d.as_slice(), 1, (0, 0)),
                Node::Symlink(t) => (0o120000, t.as_bytes(), 1, (0, 0)),
                Node::CharDev(a, b) => (0o020000, &[], 1, (*a, *b)),
            };
            let ino = u32::try_from(ino + 1)
                .map_err(|_| ImageError::Build("too many initramfs entries".into()))?;
            let size = u32::try_from(data.len())
                .map_err(|_| ImageError::Build(format!("{path}: file over 4 GiB")))?;
            write_entry(
                &mut out,
                path,
                ino,
                kind | perm,
                nlink,
                mtime,
                size,
                rdev,
                data,
            )?;
        }
        write_entry(&mut out, "TRAILER!!!", 0, 0, 1, 0, 0, (0, 0), &[])?;
        Ok(out)
    }
}

#[allow(clippy::too_many_arguments)]
fn write_entry(
    out: &mut Vec<u8>,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    data: &[u8],
) -> Result<(), ImageError> {
    let namesize =
        u32::try_from(name.len() + 1).map_err(|_| ImageError::Build("name too long".into()))?;
    let fields = [
        ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Compress an initramfs deterministically: gzip level 9, no file name, mtime 0, OS byte 3.
pub fn gzip(data: &[u8]) -> Result<Vec<u8>, ImageError> {
    use std::io::Write;
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), flate2::Compression::best());
    enc.write_all(data)
        .map_err(|e| ImageError::Build(format!("gzip: {e}")))?;
    enc.finish()
        .map_err(|e| ImageError::Build(format!("gzip: {e}")))
}

/// Read a `newc` archive back (for `image verify` listings and the tests).
pub fn parse_newc(data: &[u8]) -> Result<Vec<(String, u32, Vec<u8>)>, ImageError> {
    let bad = |m: &str| ImageError::Build(format!("cpio: {m}"));
    let mut pos = 0usize;
    let mut out = Vec::new();
    loop {
        let h = data
            .get(pos..pos + 110)
            .ok_or_else(|| bad("truncated header"))?;
        if h.get(0..6) != Some(b"070701") {
            return Err(bad("not newc"));
        }
        let field = |i: usize| -> Result<u32, ImageError> {
            let s = h.get(6 + i * 8..14 + i * 8).ok_or_else(|| bad("header"))?;
            u32::from_str_radix(std::str::from_utf8(s).map_err(|_| bad("header"))?, 16)
                .map_err(|_| bad("header field"))
        };
        let mode = field(1)?;
        let size = field(6)? as usize;
        let namesize = field(11)? as usize;
        let name_start = pos + 110;
        let name = data
            .get(name_start..name_start + namesize.saturating_sub(1))
            .ok_or_else(|| bad("truncated name"))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad("name not UTF-8"))?;
        let data_start = (name_start + namesize + 3) & !3;
        let body = data
            .get(data_start..data_start + size)
            .ok_or_else(|| bad("truncated data"))?;
        pos = (data_start + size + 3) & !3;
        if name == "TRAILER!!!" {
            return Ok(out);
        }
        out.push((name, mode, body.to_vec()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_is_sorted_complete_and_round_trips() -> Result<(), ImageError> {
        let mut t = Tree::default();
        t.add("/usr/lib/x/libc.so.6", Node::File(b"abc".to_vec()), 0o755)?;
        t.add("/init", Node::File(b"elf".to_vec()), 0o755)?;
        t.add("/lib64", Node::Symlink("usr/lib64".into()), 0o777)?;
        t.add("/dev/console", Node::CharDev(5, 1), 0o600)?;
        let a = t.to_newc(1_700_000_000)?;
        let entries = parse_newc(&a)?;
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "lib64",
                "usr",
                "usr/lib",
                "usr/lib/x",
                "usr/lib/x/libc.so.6"
            ]
        );
        assert_eq!(
            entries.get(2).map(|e| (e.1, e.2.as_slice())),
            Some((0o100755, &b"elf"[..]))
        );
        assert_eq!(entries.get(1).map(|e| e.1), Some(0o020600));
        // Same tree, same bytes; the timestamp is in every header.
        assert_eq!(t.to_newc(1_700_000_000)?, a);
        assert_ne!(t.to_newc(1_700_000_001)?, a);
        // gzip is deterministic too.
        assert_eq!(gzip(&a)?, gzip(&a)?);
        Ok(())
    }

    #[test]
    fn conflicting_paths_are_errors() -> Result<(), ImageError> {
        let mut t = Tree::default();
        t.add("a/b", Node::File(vec![1]), 0o644)?;
        assert!(t.add("a/b", Node::File(vec![2]), 0o644).is_err());
        assert!(t.add("a/b/c", Node::File(vec![2]), 0o644).is_err());
        assert!(t.add("../x", Node::Dir, 0o755).is_err());
        t.add("a/b", Node::File(vec![1]), 0o644)?;
        Ok(())
    }
}
