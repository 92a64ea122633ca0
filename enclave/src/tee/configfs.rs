//! Linux configfs-tsm (`/sys/kernel/config/tsm/report`): the kernel's one interface for TDX
//! quotes and SNP reports. A report is requested by creating a directory, writing `inblob`
//! (the 64-byte report data) and reading `outblob` (and `auxblob`: the SNP certificate table).
//! `generation` counts writes: if it moved by more than our own write, another process raced us
//! and the outblob may not be over our data, so we fail rather than return it.

use std::fs;
use std::path::{Path, PathBuf};

use super::TeeError;

/// What configfs-tsm produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsmReport {
    /// `provider`: `tdx_guest` or `sev_guest`.
    pub provider: String,
    /// `outblob`: the quote or report.
    pub outblob: Vec<u8>,
    /// `auxblob`: SNP certificate table (GUID table), empty if none.
    pub auxblob: Vec<u8>,
}

/// The provider, if configfs-tsm is mounted and has one.
pub fn provider(root: &Path) -> Option<String> {
    // The provider is only visible inside a report entry; a probe entry is created and removed.
    if !root.is_dir() {
        return None;
    }
    let probe = root.join(format!("chrysalis-probe-{}", std::process::id()));
    let made = fs::create_dir(&probe).is_ok();
    let p = fs::read_to_string(probe.join("provider"))
        .ok()
        .map(|s| s.trim().to_owned());
    if made {
        let _ = fs::remove_dir(&probe);
    }
    p.filter(|s| !s.is_empty())
}

/// The file operations a report request needs: the real configfs, or a recording in tests.
pub trait TsmFs: std::fmt::Debug {
    /// Create the entry directory (Ok(false) if it already existed).
    fn create_dir(&self, dir: &Path) -> std::io::Result<bool>;
    /// Remove the entry directory.
    fn remove_dir(&self, dir: &Path);
    /// Read an attribute.
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// Write an attribute.
    fn write(&self, path: &Path, data: &[u8]) -> std::io::Result<()>;
}

/// The kernel's configfs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl TsmFs for RealFs {
    fn create_dir(&self, dir: &Path) -> std::io::Result<bool> {
        match fs::create_dir(dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn remove_dir(&self, dir: &Path) {
        let _ = fs::remove_dir(dir);
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        fs::read(path)
    }
    fn write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        fs::write(path, data)
    }
}

fn read_generation(fs: &dyn TsmFs, dir: &Path) -> Result<u64, TeeError> {
    let p = dir.join("generation");
    let raw = fs.read(&p).map_err(|e| TeeError::io(&p, e))?;
    let s = String::from_utf8_lossy(&raw);
    s.trim().parse().map_err(|_| TeeError::Protocol {
        interface: "configfs-tsm",
        message: format!("generation {:?} is not a number", s.trim()),
    })
}

/// Request a report over `report_data` from `provider` (`tdx_guest` or `sev_guest`): a report
/// from the other vendor's provider is an error.
pub fn request(
    fs: &dyn TsmFs,
    root: &Path,
    provider: &str,
    report_data: &[u8; 64],
) -> Result<TsmReport, TeeError> {
    let dir: PathBuf = root.join(format!("chrysalis-{}", std::process::id()));
    let expected = provider;
    let created = fs.create_dir(&dir).map_err(|e| TeeError::io(&dir, e))?;
    let result = (|| {
        let before = read_generation(fs, &dir)?;
        let inblob = dir.join("inblob");
        fs.write(&inblob, report_data)
            .map_err(|e| TeeError::io(&inblob, e))?;
        let outblob_path = dir.join("outblob");
        let outblob = fs
            .read(&outblob_path)
            .map_err(|e| TeeError::io(&outblob_path, e))?;
        let after = read_generation(fs, &dir)?;
        if after != before + 1 {
            return Err(TeeError::Protocol {
                interface: "configfs-tsm",
                message: format!(
                    "generation went from {before} to {after}: another writer raced this request"
                ),
            });
        }
        let auxblob = fs.read(&dir.join("auxblob")).unwrap_or_default();
        let provider_path = dir.join("provider");
        let provider = String::from_utf8_lossy(
            &fs.read(&provider_path)
                .map_err(|e| TeeError::io(&provider_path, e))?,
        )
        .trim()
        .to_owned();
        if provider != expected {
            return Err(TeeError::Protocol {
                interface: "configfs-tsm",
                message: format!("provider {provider:?} is not {expected}"),
            });
        }
        if outblob.is_empty() {
            return Err(TeeError::Protocol {
                interface: "configfs-tsm",
                message: "empty outblob".into(),
            });
        }
        Ok(TsmReport {
            provider,
            outblob,
            auxblob,
        })
    })();
    if created {
        fs.remove_dir(&dir);
    }
    result
}

/// A recording of configfs-tsm that behaves like the kernel: writing `inblob` bumps
/// `generation` and yields the recorded `outblob`. For tests of the hardware paths.
#[derive(Debug)]
pub struct RecordedFs {
    /// `provider` contents.
    pub provider: String,
    /// Recorded `outblob`.
    pub outblob: Vec<u8>,
    /// Recorded `auxblob`.
    pub auxblob: Vec<u8>,
    /// Extra bump of `generation` per write (simulates a racing writer when non-zero).
    pub race: u64,
    state: std::sync::Mutex<(u64, Option<Vec<u8>>)>,
}

impl RecordedFs {
    /// A recording.
    pub fn new(provider: &str, outblob: Vec<u8>, auxblob: Vec<u8>) -> Self {
        Self {
            provider: provider.into(),
            outblob,
            auxblob,
            race: 0,
            state: std::sync::Mutex::new((0, None)),
        }
    }

    /// The last `inblob` written.
    pub fn last_inblob(&self) -> Option<Vec<u8>> {
        self.state.lock().ok().and_then(|s| s.1.clone())
    }
}

impl TsmFs for RecordedFs {
    fn create_dir(&self, _dir: &Path) -> std::io::Result<bool> {
        Ok(true)
    }
    fn remove_dir(&self, _dir: &Path) {}
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let gen = self.state.lock().map(|s| s.0).unwrap_or(0);
        match name {
            "generation" => Ok(format!("{gen}\n").into_bytes()),
            "outblob" => Ok(self.outblob.clone()),
            "auxblob" => Ok(self.auxblob.clone()),
            "provider" => Ok(format!("{}\n", self.provider).into_bytes()),
            _ => Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
        }
    }
    fn write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        if path.file_name().and_then(|n| n.to_str()) != Some("inblob") || data.len() != 64 {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        let mut s = self
            .state
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?;
        s.0 += 1 + self.race;
        s.1 = Some(data.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_reads_outblob_and_checks_generation() {
        let fs = RecordedFs::new("tdx_guest", vec![1, 2, 3], vec![]);
        let r = request(&fs, Path::new("/tsm"), "tdx_guest", &[7; 64]).expect("report");
        assert_eq!(r.provider, "tdx_guest");
        assert_eq!(r.outblob, vec![1, 2, 3]);
        assert_eq!(fs.last_inblob(), Some(vec![7; 64]));
        let mut racy = RecordedFs::new("tdx_guest", vec![1], vec![]);
        racy.race = 1;
        let err =
            request(&racy, Path::new("/tsm"), "tdx_guest", &[7; 64]).expect_err("race detected");
        assert!(err.to_string().contains("raced"), "{err}");
        let empty = RecordedFs::new("sev_guest", vec![], vec![]);
        assert!(request(&empty, Path::new("/tsm"), "sev_guest", &[0; 64]).is_err());
    }
}
