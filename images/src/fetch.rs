//! Fetch pinned packages into a cache, verified by SHA-256 before anything reads them.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::recipe::Package;
use crate::ImageError;

/// Hex SHA-256 of bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Progress lines on stderr: a rewritten line on a terminal, a line per quarter otherwise.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    quiet: bool,
}

impl Progress {
    /// Progress on stderr (`quiet` for tests).
    pub fn new(quiet: bool) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            quiet,
        }
    }

    /// One step of the build.
    pub fn step(&self, msg: &str) {
        if !self.quiet {
            eprintln!("image: {msg}");
        }
    }

    fn download(&self, name: &str, done: u64, total: Option<u64>, last: &mut u64) {
        if self.quiet {
            return;
        }
        let pct = total.filter(|t| *t > 0).map(|t| done * 100 / t);
        if self.tty {
            let p = pct.map_or(String::new(), |p| format!(" {p:3}%"));
            eprint!("\rimage: fetching {name}{p} ({} MiB)", done >> 20);
            let _ = std::io::stderr().flush();
        } else if let Some(p) = pct {
            if p >= *last + 25 {
                *last = p - p % 25;
                eprintln!(
                    "image: fetching {name}: {p}% of {} MiB",
                    total.unwrap_or(0) >> 20
                );
            }
        }
    }
}

/// The `.deb` of a package: from the cache when its digest matches, else downloaded from the
/// mirror (then checked, then moved into the cache). A mismatch is an error naming both digests.
pub fn fetch_package(
    mirror: &str,
    pkg: &Package,
    cache: &Path,
    progress: &Progress,
) -> Result<Vec<u8>, ImageError> {
    let file_name = pkg.path.rsplit('/').next().unwrap_or(&pkg.name).to_string();
    let cached: PathBuf = cache.join(&file_name);
    if let Ok(bytes) = std::fs::read(&cached) {
        if sha256_hex(&bytes) == pkg.sha256 {
            progress.step(&format!("{} {} (cached, sha256 ok)", pkg.name, pkg.version));
            return Ok(bytes);
        }
    }
    let url = format!("{}/{}", mirror.trim_end_matches('/'), pkg.path);
    let bytes = download(&url, &pkg.name, progress)?;
    let got = sha256_hex(&bytes);
    if got != pkg.sha256 {
        return Err(ImageError::Fetch(format!(
            "{url}: sha256 {got}, the recipe pins {} (the archive changed, or the download was \
             tampered with)",
            pkg.sha256
        )));
    }
    std::fs::create_dir_all(cache).map_err(|e| ImageError::io(cache, e))?;
    let part = cache.join(format!("{file_name}.part"));
    std::fs::write(&part, &bytes).map_err(|e| ImageError::io(&part, e))?;
    std::fs::rename(&part, &cached).map_err(|e| ImageError::io(&cached, e))?;
    progress.step(&format!("{} {} fetched, sha256 ok", pkg.name, pkg.version));
    Ok(bytes)
}

fn download(url: &str, name: &str, progress: &Progress) -> Result<Vec<u8>, ImageError> {
    if let Some(path) = url.strip_prefix("file://") {
        return std::fs::read(path).map_err(|e| ImageError::io(Path::new(path), e));
    }
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .map_err(|e| ImageError::Fetch(format!("{url}: {e}")))?;
    let mut resp = client
        .get(url)
        .send()
        .map_err(|e| ImageError::Fetch(format!("{url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(ImageError::Fetch(format!(
            "{url}: HTTP {} (Debian removes superseded versions from the pool: update the \
             recipe's pin)",
            resp.status()
        )));
    }
    let total = resp.content_length();
    let mut out = Vec::with_capacity(total.unwrap_or(0).min(1 << 30) as usize);
    let mut buf = vec![0u8; 1 << 16];
    let mut last = 0;
    loop {
        let n = resp
            .read(&mut buf)
            .map_err(|e| ImageError::Fetch(format!("{url}: {e}")))?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(buf.get(..n).unwrap_or_default());
        progress.download(name, out.len() as u64, total, &mut last);
    }
    if progress.tty && !progress.quiet {
        eprintln!();
    }
    Ok(out)
}
