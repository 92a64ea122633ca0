//! Reproducible VM images.
//!
//! Will own: image recipes pinning every input by version and SHA-256, the deterministic
//! initramfs build, the manifest with expected measurements per VM shape, and the policy emitted
//! from a manifest. Not implemented yet: see the image issue.
#![forbid(unsafe_code)]
