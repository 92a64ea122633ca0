//! Reproducible Chrysalis VM images with published expected measurements.
//!
//! - [`recipe`]: TOML recipes pinning every input by version and SHA-256.
//! - [`fetch`]: pinned Debian packages, verified before use; [`deb`] reads them in memory.
//! - [`kmod`]: kernel modules and their dependencies from the kernel package.
//! - [`cpio`]: the deterministic initramfs (sorted `newc`, fixed times, owners and modes).
//! - [`build`]: recipe to image directory; [`manifest`]: the manifest with expected
//!   measurements per VM shape, `verify`, and the policy that accepts exactly the image.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

pub mod build;
pub mod cpio;
pub mod deb;
pub mod fetch;
pub mod kmod;
pub mod manifest;
pub mod recipe;

pub use build::{build, BuildOptions};
pub use manifest::{Manifest, VerifyReport};
pub use recipe::Recipe;

/// Why an image could not be built, verified or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The recipe is invalid.
    #[error("recipe: {0}")]
    Recipe(String),
    /// A download failed or did not match its pin.
    #[error("fetch: {0}")]
    Fetch(String),
    /// A package could not be read.
    #[error("package: {0}")]
    Package(String),
    /// Assembling the image failed.
    #[error("build: {0}")]
    Build(String),
    /// The manifest is unreadable or inconsistent.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A measurement could not be computed.
    #[error("measurement: {0}")]
    Measure(#[from] chrysalis_attestation::measure::MeasureError),
}

impl ImageError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
