//! Build an image from a recipe: fetch and check the pinned inputs, assemble the deterministic
//! initramfs, write the components and the manifest with the expected measurements.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrysalis_proto::guest::{
    GuestConfig, GuestModel, GuestNetwork, GUEST_CONFIG_FORMAT, GUEST_CONFIG_PATH,
};
use sha2::{Digest, Sha384};

use crate::cpio::{Node, Tree};
use crate::deb::DebData;
use crate::fetch::{fetch_package, sha256_hex, Progress};
use crate::manifest::{Component, InitrdEntry, Manifest, PackageRef, MANIFEST_FORMAT};
use crate::recipe::{Compression, ModelPlacement, Recipe, Source};
use crate::ImageError;

/// File names of an image directory.
pub mod files {
    /// The kernel.
    pub const KERNEL: &str = "vmlinuz";
    /// The initramfs.
    pub const INITRD: &str = "initrd.img";
    /// Firmware for TDX and plain VMs.
    pub const FIRMWARE_TDX: &str = "firmware-tdx.fd";
    /// Firmware for SNP (an AmdSev build).
    pub const FIRMWARE_SNP: &str = "firmware-snp.fd";
    /// The model disk.
    pub const MODEL_DISK: &str = "model.img";
    /// The manifest.
    pub const MANIFEST: &str = "manifest.json";
}

/// Where the model disk appears in the guest (the only virtio disk).
pub const MODEL_DEVICE: &str = "/dev/vda";

/// Options of a build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Download cache.
    pub cache: PathBuf,
    /// No progress output.
    pub quiet: bool,
}

struct Packages<'a> {
    recipe: &'a Recipe,
    cache: PathBuf,
    progress: &'a Progress,
    read: BTreeMap<String, DebData>,
}

impl Packages<'_> {
    fn get(&mut self, name: &str) -> Result<&DebData, ImageError> {
        if !self.read.contains_key(name) {
            let pkg = self
                .recipe
                .packages
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| ImageError::Recipe(format!("no package {name}")))?;
            let deb = fetch_package(&self.recipe.archive.mirror, pkg, &self.cache, self.progress)?;
            self.progress.step(&format!("reading {name}"));
            let data = crate::deb::read_deb(name, &deb)?;
            self.read.insert(name.to_string(), data);
        }
        self.read
            .get(name)
            .ok_or_else(|| ImageError::Recipe(format!("no package {name}")))
    }

    fn package_ref(&self, name: &str, path: &str) -> Option<PackageRef> {
        self.recipe
            .packages
            .iter()
            .find(|p| p.name == name)
            .map(|p| PackageRef {
                package: p.name.clone(),
                version: p.version.clone(),
                deb_sha256: p.sha256.clone(),
                path: path.to_string(),
            })
    }

    /// The bytes (and mode) of a source, checked.
    fn source(
        &mut self,
        src: &Source,
        base: &Path,
    ) -> Result<(Vec<u8>, u32, Option<PackageRef>), ImageError> {
        match src {
            Source::Package { package, path } => {
                let (data, mode) = self.get(package)?.file(path)?;
                let data = data.to_vec();
                Ok((data, mode, self.package_ref(package, path)))
            }
            Source::File { file, sha256 } => {
                let p = base.join(file);
                let data = std::fs::read(&p).map_err(|e| ImageError::io(&p, e))?;
                let got = sha256_hex(&data);
                if &got != sha256 {
                    return Err(ImageError::Build(format!(
                        "{}: sha256 {got}, the recipe pins {sha256}",
                        p.display()
                    )));
                }
                Ok((data, 0o644, None))
            }
        }
    }
}

fn write_file(dir: &Path, name: &str, data: &[u8]) -> Result<(), ImageError> {
    let path = dir.join(name);
    let part = dir.join(format!(".{name}.part"));
    std::fs::write(&part, data).map_err(|e| ImageError::io(&part, e))?;
    std::fs::rename(&part, &path).map_err(|e| ImageError::io(&path, e))
}

fn component(file: &str, data: &[u8], source: Option<PackageRef>) -> Component {
    Component {
        file: file.to_string(),
        sha256: sha256_hex(data),
        size: data.len() as u64,
        source,
    }
}

/// Build the image of a recipe into `opts.out`. Same recipe and inputs: same bytes, wherever
/// and whenever it runs.
pub fn build(recipe_path: &Path, opts: &BuildOptions) -> Result<Manifest, ImageError> {
    let progress = Progress::new(opts.quiet);
    let recipe_text = std::fs::read(recipe_path).map_err(|e| ImageError::io(recipe_path, e))?;
    let recipe = Recipe::load(recipe_path)?;
    let base = recipe_path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let epoch = recipe.epoch()?;
    std::fs::create_dir_all(&opts.out).map_err(|e| ImageError::io(&opts.out, e))?;
    let mut pkgs = Packages {
        recipe: &recipe,
        cache: opts.cache.clone(),
        progress: &progress,
        read: BTreeMap::new(),
    };
    let mut components = BTreeMap::new();

    // Kernel and firmware.
    let (kernel, _, kref) = pkgs.source(&recipe.kernel.image, &base)?;
    write_file(&opts.out, files::KERNEL, &kernel)?;
    components.insert(
        "kernel".to_string(),
        component(files::KERNEL, &kernel, kref),
    );
    for (key, src, file) in [
        ("firmware_tdx", &recipe.firmware.tdx, files::FIRMWARE_TDX),
        ("firmware_snp", &recipe.firmware.snp, files::FIRMWARE_SNP),
    ] {
        let path = opts.out.join(file);
        match src {
            Some(src) => {
                let (fw, _, r) = pkgs.source(src, &base)?;
                write_file(&opts.out, file, &fw)?;
                components.insert(key.to_string(), component(file, &fw, r));
            }
            None if path.exists() => {
                std::fs::remove_file(&path).map_err(|e| ImageError::io(&path, e))?
            }
            None => {}
        }
    }

    // The initramfs tree.
    progress.step("assembling the initramfs");
    let mut tree = Tree::default();
    for d in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "etc/chrysalis",
        "models",
    ] {
        tree.add(d, Node::Dir, 0o755)?;
    }
    tree.add("dev/console", Node::CharDev(5, 1), 0o600)?;
    tree.add("dev/null", Node::CharDev(1, 3), 0o666)?;
    tree.add("lib", Node::Symlink("usr/lib".into()), 0o777)?;
    tree.add("lib64", Node::Symlink("usr/lib64".into()), 0o777)?;
    let mut module_paths = Vec::new();
    if let Some(mp) = &recipe.kernel.modules_package {
        let pkg = pkgs.get(mp)?;
        for m in crate::kmod::resolve(pkg, &recipe.kernel.modules)? {
            tree.add(&m.path, Node::File(m.data), 0o644)?;
            module_paths.push(format!("/{}", m.path));
        }
    }
    let mut libraries = Vec::new();
    for lib in &recipe.libraries {
        let Source::Package { path, .. } = lib else {
            continue; // Recipe::check refuses file sources here.
        };
        let (data, mode, r) = pkgs.source(lib, &base)?;
        tree.add(path, Node::File(data), mode)?;
        libraries.extend(r);
    }
    let enclave_path = base.join(&recipe.enclave.binary);
    let enclave = std::fs::read(&enclave_path).map_err(|e| {
        ImageError::Build(format!(
            "enclave binary {}: {e} (build it first: `make image` does)",
            enclave_path.display()
        ))
    })?;
    let enclave_sha256 = sha256_hex(&enclave);
    if let Some(pin) = &recipe.enclave.sha256 {
        if *pin != enclave_sha256 {
            return Err(ImageError::Build(format!(
                "enclave binary {}: sha256 {enclave_sha256}, the recipe pins {pin}",
                enclave_path.display()
            )));
        }
    }
    let enclave_sha384 = hex::encode(Sha384::digest(&enclave));
    tree.add("init", Node::File(enclave), 0o755)?;

    let mut enclave_args = recipe.enclave.args.clone();
    let mut model_component = None;
    let mut guest_model = None;
    let model_disk_path = opts.out.join(files::MODEL_DISK);
    if let Some(m) = &recipe.model {
        let p = base.join(&m.file);
        let data = std::fs::read(&p).map_err(|e| {
            ImageError::Build(format!(
                "model {}: {e} (`make model` fetches the default)",
                p.display()
            ))
        })?;
        let got = sha256_hex(&data);
        if got != m.sha256 {
            return Err(ImageError::Build(format!(
                "model {}: sha256 {got}, the recipe pins {}",
                p.display(),
                m.sha256
            )));
        }
        let file_name = m
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model.gguf".into());
        match m.placement {
            ModelPlacement::Disk => {
                guest_model = Some(GuestModel {
                    device: MODEL_DEVICE.into(),
                    size: data.len() as u64,
                    sha256: got.clone(),
                    file_name,
                });
                let mut disk = data;
                disk.resize(disk.len().div_ceil(512) * 512, 0);
                write_file(&opts.out, files::MODEL_DISK, &disk)?;
                model_component = Some(component(files::MODEL_DISK, &disk, None));
            }
            ModelPlacement::Initramfs => {
                let path = format!("models/{file_name}");
                tree.add(&path, Node::File(data), 0o644)?;
                enclave_args.push("--model".into());
                enclave_args.push(format!("/{path}"));
            }
        }
    }
    if model_component.is_none() && model_disk_path.exists() {
        std::fs::remove_file(&model_disk_path).map_err(|e| ImageError::io(&model_disk_path, e))?;
    }
    let network = recipe
        .network
        .as_ref()
        .map(|n| -> Result<GuestNetwork, ImageError> {
            let (address, prefix) = crate::recipe::parse_address(&n.address)?;
            Ok(GuestNetwork {
                interface: n.interface.clone(),
                address,
                prefix,
            })
        })
        .transpose()?;
    let guest = GuestConfig {
        format: GUEST_CONFIG_FORMAT.into(),
        modules: module_paths,
        network,
        model: guest_model,
        enclave_args,
    };
    let guest_json = serde_json::to_vec_pretty(&guest)
        .map_err(|e| ImageError::Build(format!("guest configuration: {e}")))?;
    tree.add(GUEST_CONFIG_PATH, Node::File(guest_json), 0o644)?;

    let listing: Vec<InitrdEntry> = tree.iter().map(InitrdEntry::of).collect();
    let newc = tree.to_newc(epoch)?;
    let initrd = match recipe.compression {
        Compression::Gzip => crate::cpio::gzip(&newc)?,
        Compression::None => newc,
    };
    write_file(&opts.out, files::INITRD, &initrd)?;
    components.insert("initrd".into(), component(files::INITRD, &initrd, None));
    if let Some(c) = model_component {
        components.insert("model_disk".into(), c);
    }

    let mut manifest = Manifest {
        format: MANIFEST_FORMAT.into(),
        name: recipe.name.clone(),
        recipe_sha256: sha256_hex(&recipe_text),
        source_date_epoch: epoch,
        cmdline: recipe.cmdline.clone(),
        compression: recipe.compression,
        components,
        enclave: crate::manifest::EnclaveRef {
            sha256: enclave_sha256,
            sha384: enclave_sha384,
            args: recipe.enclave.args.clone(),
        },
        model: recipe.model.as_ref().map(|m| crate::manifest::ModelRef {
            sha256: m.sha256.clone(),
            placement: m.placement,
        }),
        libraries,
        guest,
        initramfs: listing,
        shapes: recipe.shapes.clone().into_iter().map(Into::into).collect(),
        snp_firmware_note: recipe.firmware.snp_note.clone(),
        measurements: Default::default(),
    };
    progress.step("computing the expected measurements");
    manifest.measurements = manifest.compute_measurements(&opts.out)?;
    let text = manifest.to_json()?;
    write_file(&opts.out, files::MANIFEST, text.as_bytes())?;
    progress.step(&format!("built {} in {}", recipe.name, opts.out.display()));
    Ok(manifest)
}
