//! Kernel modules from a Debian kernel package: find them by name, decompress them, read their
//! dependencies from the ELF `.modinfo` section (Debian's package has no `modules.dep`; depmod
//! runs at install time), and order them so dependencies load first.

use std::collections::{BTreeMap, BTreeSet};

use crate::deb::{DebData, DebEntry};
use crate::ImageError;

/// A module ready for the initramfs.
#[derive(Clone, PartialEq, Eq)]
pub struct Module {
    /// Canonical name (`-` as `_`).
    pub name: String,
    /// Path in the initramfs (`usr/lib/modules/VERSION/kernel/.../name.ko`).
    pub path: String,
    /// Uncompressed ELF object.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Module({} at {}, {} bytes)",
            self.name,
            self.path,
            self.data.len()
        )
    }
}

fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Index `name -> path` of every module in the package.
fn index(pkg: &DebData) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (path, e) in &pkg.entries {
        if !matches!(e, DebEntry::File { .. }) || !path.starts_with("usr/lib/modules/") {
            continue;
        }
        let file = path.rsplit('/').next().unwrap_or_default();
        for suffix in [".ko.xz", ".ko.gz", ".ko"] {
            if let Some(stem) = file.strip_suffix(suffix) {
                out.insert(canonical(stem), path.clone());
                break;
            }
        }
    }
    out
}

fn field<const N: usize>(b: &[u8], o: usize) -> Option<[u8; N]> {
    b.get(o..o.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    field(b, o).map(u16::from_le_bytes)
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    field(b, o).map(u32::from_le_bytes)
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    field(b, o).map(u64::from_le_bytes)
}

/// The `.modinfo` section of an ELF64 little-endian object.
pub fn modinfo(elf: &[u8]) -> Option<&[u8]> {
    if elf.get(0..4)? != b"\x7fELF" || *elf.get(4)? != 2 || *elf.get(5)? != 1 {
        return None;
    }
    let shoff = usize::try_from(u64_at(elf, 0x28)?).ok()?;
    let shentsize = usize::from(u16_at(elf, 0x3A)?);
    let shnum = usize::from(u16_at(elf, 0x3C)?);
    let shstrndx = usize::from(u16_at(elf, 0x3E)?);
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(elf, h)?,
            usize::try_from(u64_at(elf, h.checked_add(0x18)?)?).ok()?,
            usize::try_from(u64_at(elf, h.checked_add(0x20)?)?).ok()?,
        ))
    };
    let (_, stroff, strsize) = section(shstrndx)?;
    let strtab = elf.get(stroff..stroff.checked_add(strsize)?)?;
    for i in 0..shnum {
        let (name, off, size) = section(i)?;
        let n = strtab.get(name as usize..)?;
        let n = n.get(..n.iter().position(|&c| c == 0)?)?;
        if n == b".modinfo" {
            return elf.get(off..off.checked_add(size)?);
        }
    }
    None
}

/// The `depends=` list of a module.
pub fn depends(elf: &[u8]) -> Result<Vec<String>, ImageError> {
    let info = modinfo(elf).ok_or_else(|| ImageError::Package("module without .modinfo".into()))?;
    Ok(info
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(canonical)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .collect())
}

/// The named modules and their dependencies, dependencies first; ties in name order.
pub fn resolve(pkg: &DebData, wanted: &[String]) -> Result<Vec<Module>, ImageError> {
    let idx = index(pkg);
    let mut loaded: BTreeMap<String, (String, Vec<u8>, Vec<String>)> = BTreeMap::new();
    let mut todo: Vec<String> = wanted.iter().map(|w| canonical(w)).collect();
    while let Some(name) = todo.pop() {
        if loaded.contains_key(&name) {
            continue;
        }
        let path = idx.get(&name).ok_or_else(|| {
            ImageError::Package(format!(
                "{}: no module {name} (is it built in, or named differently?)",
                pkg.name
            ))
        })?;
        let (raw, _) = pkg.file(path)?;
        let data = crate::deb::decompress(path, raw)?;
        let deps = depends(&data).map_err(|e| ImageError::Package(format!("{path}: {e}")))?;
        todo.extend(deps.iter().cloned());
        let out_path = path
            .strip_suffix(".xz")
            .or_else(|| path.strip_suffix(".gz"))
            .unwrap_or(path)
            .to_string();
        loaded.insert(name, (out_path, data, deps));
    }
    // Topological order, deterministic: repeatedly take the smallest name whose deps are done.
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut order = Vec::new();
    while done.len() < loaded.len() {
        let next = loaded
            .iter()
            .find(|(n, (_, _, deps))| !done.contains(*n) && deps.iter().all(|d| done.contains(d)))
            .map(|(n, _)| n.clone())
            .ok_or_else(|| ImageError::Package("module dependency cycle".into()))?;
        done.insert(next.clone());
        order.push(next);
    }
    Ok(order
        .into_iter()
        .filter_map(|n| {
            let (path, data, _) = loaded.remove(&n)?;
            Some(Module {
                name: n,
                path,
                data,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 object with one `.modinfo` section.
    pub(crate) fn fake_module(info: &[u8]) -> Vec<u8> {
        let shstr = b"\0.modinfo\0.shstrtab\0";
        let mut elf = vec![0u8; 64];
        elf[0..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        let info_off = elf.len();
        elf.extend_from_slice(info);
        let str_off = elf.len();
        elf.extend_from_slice(shstr);
        let shoff = elf.len();
        let sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        let s0 = sh(0, 0, 0);
        let s1 = sh(1, info_off, info.len());
        let s2 = sh(10, str_off, shstr.len());
        elf.extend(s0);
        elf.extend(s1);
        elf.extend(s2);
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3E..0x40].copy_from_slice(&2u16.to_le_bytes());
        elf
    }

    fn pkg(mods: &[(&str, &str)]) -> DebData {
        let mut d = DebData {
            name: "k".into(),
            ..Default::default()
        };
        for (name, deps) in mods {
            let info = format!("license=GPL\0depends={deps}\0name={name}\0");
            d.entries.insert(
                format!("usr/lib/modules/6.12/kernel/{name}.ko"),
                DebEntry::File {
                    data: fake_module(info.as_bytes()),
                    mode: 0o644,
                },
            );
        }
        d
    }

    #[test]
    fn dependencies_load_first() -> Result<(), ImageError> {
        let p = pkg(&[
            ("virtio_net", "net_failover"),
            ("net_failover", "failover"),
            ("failover", ""),
            ("tdx-guest", "tsm"),
            ("tsm", "configfs"),
            ("configfs", ""),
        ]);
        let mods = resolve(&p, &["tdx-guest".into(), "virtio_net".into()])?;
        let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "configfs",
                "failover",
                "net_failover",
                "tsm",
                "tdx_guest",
                "virtio_net"
            ]
        );
        Ok(())
    }

    #[test]
    fn missing_and_cyclic_modules_are_errors() {
        let p = pkg(&[("a", "b"), ("b", "a")]);
        let e = resolve(&p, &["a".into()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("cycle"), "{e}");
        let e = resolve(&p, &["zzz".into()])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no module zzz"), "{e}");
    }
}
