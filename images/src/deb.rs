//! Debian packages read in memory: the `ar` container, then `data.tar` (xz, gzip or plain).

use std::collections::BTreeMap;
use std::io::Read;

use crate::ImageError;

/// One entry of a package's data.
#[derive(Clone, PartialEq, Eq)]
pub enum DebEntry {
    /// A regular file with its permission bits.
    File {
        /// Contents.
        data: Vec<u8>,
        /// Permission bits.
        mode: u32,
    },
    /// A symbolic link.
    Symlink(String),
    /// A directory.
    Dir,
}

impl std::fmt::Debug for DebEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DebEntry::File { data, mode } => write!(f, "File({} bytes, {mode:o})", data.len()),
            DebEntry::Symlink(t) => write!(f, "Symlink({t})"),
            DebEntry::Dir => write!(f, "Dir"),
        }
    }
}

/// The data of a package: normalized paths (no leading `./` or `/`) to entries.
#[derive(Debug, Default)]
pub struct DebData {
    /// Package name (for messages).
    pub name: String,
    /// Entries by path.
    pub entries: BTreeMap<String, DebEntry>,
}

/// Members of an `ar` archive, in order.
fn ar_members(deb: &[u8]) -> Result<Vec<(String, &[u8])>, ImageError> {
    let bad = |m: &str| ImageError::Package(format!("not a Debian package: {m}"));
    let rest = deb
        .strip_prefix(b"!<arch>\n")
        .ok_or_else(|| bad("no ar magic"))?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < rest.len() {
        let header = rest
            .get(pos..pos + 60)
            .ok_or_else(|| bad("truncated member header"))?;
        if header.get(58..60) != Some(b"`\n") {
            return Err(bad("bad member header"));
        }
        let name = String::from_utf8_lossy(header.get(0..16).unwrap_or_default())
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: usize = std::str::from_utf8(header.get(48..58).unwrap_or_default())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| bad("bad member size"))?;
        let start = pos + 60;
        let data = rest
            .get(
                start
                    ..start
                        .checked_add(size)
                        .ok_or_else(|| bad("size overflow"))?,
            )
            .ok_or_else(|| bad("truncated member"))?;
        out.push((name, data));
        pos = start + size + (size % 2);
    }
    Ok(out)
}

/// Decompress by file name suffix: `.xz` and `.gz` are decompressed, anything else is
/// returned as it is. Used for `data.tar.*` members and for kernel modules (`.ko.xz`).
pub fn decompress(name: &str, data: &[u8]) -> Result<Vec<u8>, ImageError> {
    let err = |e: String| ImageError::Package(format!("{name}: {e}"));
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(data), &mut out)
            .map_err(|e| err(format!("{e:?}")))?;
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(data)
            .read_to_end(&mut out)
            .map_err(|e| err(e.to_string()))?;
    } else {
        out = data.to_vec();
    }
    Ok(out)
}

/// Normalize a path inside a package: no `./`, no leading `/`, no `..`.
fn normalize(path: &str) -> Option<String> {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    let p = p.trim_end_matches('/');
    if p.split('/').any(|c| c == "..") {
        return None;
    }
    Some(p.to_string())
}

/// Read a `.deb` into memory.
pub fn read_deb(name: &str, deb: &[u8]) -> Result<DebData, ImageError> {
    let members = ar_members(deb)?;
    let (member, data) = members
        .iter()
        .find(|(n, _)| n.starts_with("data.tar"))
        .ok_or_else(|| ImageError::Package(format!("{name}: no data.tar member")))?;
    if !(member.ends_with(".tar") || member.ends_with(".tar.xz") || member.ends_with(".tar.gz")) {
        return Err(ImageError::Package(format!(
            "{name}: {member}: unsupported compression (xz, gzip and plain tar are read)"
        )));
    }
    let tar_bytes = decompress(member, data)?;
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut out = DebData {
        name: name.to_string(),
        entries: BTreeMap::new(),
    };
    let terr = |e: std::io::Error| ImageError::Package(format!("{name}: data.tar: {e}"));
    for entry in archive.entries().map_err(terr)? {
        let mut entry = entry.map_err(terr)?;
        let raw_path = entry.path().map_err(terr)?.to_string_lossy().into_owned();
        let Some(path) = normalize(&raw_path) else {
            return Err(ImageError::Package(format!(
                "{name}: path {raw_path:?} leaves the package"
            )));
        };
        if path.is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        let item = if kind.is_dir() {
            DebEntry::Dir
        } else if kind.is_symlink() {
            let target = entry
                .link_name()
                .map_err(terr)?
                .map(|t| t.to_string_lossy().into_owned())
                .unwrap_or_default();
            DebEntry::Symlink(target)
        } else if kind.is_file() {
            let mode = entry.header().mode().map_err(terr)? & 0o7777;
            let mut data = Vec::new();
            entry.read_to_end(&mut data).map_err(terr)?;
            DebEntry::File { data, mode }
        } else if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(terr)?
                .and_then(|t| normalize(&t.to_string_lossy()))
                .unwrap_or_default();
            match out.entries.get(&target) {
                Some(e @ DebEntry::File { .. }) => e.clone(),
                _ => continue,
            }
        } else {
            continue;
        };
        out.entries.insert(path, item);
    }
    Ok(out)
}

impl DebData {
    /// A regular file, following symbolic links inside the package.
    pub fn file(&self, path: &str) -> Result<(&[u8], u32), ImageError> {
        let mut p = normalize(path)
            .ok_or_else(|| ImageError::Package(format!("{}: bad path {path:?}", self.name)))?;
        for _ in 0..16 {
            match self.entries.get(&p) {
                Some(DebEntry::File { data, mode }) => return Ok((data, *mode)),
                Some(DebEntry::Symlink(t)) => {
                    p = resolve_link(&p, t).ok_or_else(|| {
                        ImageError::Package(format!(
                            "{}: link {p} -> {t} leaves the package",
                            self.name
                        ))
                    })?;
                }
                Some(DebEntry::Dir) => {
                    return Err(ImageError::Package(format!(
                        "{}: {p} is a directory",
                        self.name
                    )))
                }
                None => {
                    return Err(ImageError::Package(format!(
                        "{}: no file {path} in the package",
                        self.name
                    )))
                }
            }
        }
        Err(ImageError::Package(format!(
            "{}: {path}: too many links",
            self.name
        )))
    }
}

/// Resolve a symlink target relative to the link's directory, inside the package.
pub fn resolve_link(link: &str, target: &str) -> Option<String> {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        let mut v: Vec<&str> = link.split('/').collect();
        v.pop();
        v
    };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_package() {
        assert_eq!(
            resolve_link(
                "usr/lib64/ld-linux-x86-64.so.2",
                "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
            )
            .as_deref(),
            Some("usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
        );
        assert_eq!(resolve_link("a/b", "/etc/x").as_deref(), Some("etc/x"));
        assert_eq!(resolve_link("a", "../../x"), None);
    }

    #[test]
    fn rejects_what_is_not_a_package() {
        for bad in [&b""[..], b"!<arch>\nshort", b"PK\x03\x04"] {
            assert!(read_deb("x", bad).is_err());
        }
        // An ar archive without data.tar.
        let mut ar = b"!<arch>\n".to_vec();
        ar.extend_from_slice(
            format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                "debian-binary", 0, 0, 0, 100644, 4
            )
            .as_bytes(),
        );
        ar.extend_from_slice(b"2.0\n");
        let e = read_deb("x", &ar)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no data.tar"), "{e}");
    }
}
