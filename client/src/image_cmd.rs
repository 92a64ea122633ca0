//! `chrysalis image build | verify | policy`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrysalis_client::inputs::UsageError;
use chrysalis_images::{BuildOptions, Manifest};

fn usage(path: &Path, e: impl std::fmt::Display) -> UsageError {
    UsageError {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Build an image from a recipe.
pub fn build(
    recipe: &Path,
    out: &Path,
    cache: Option<PathBuf>,
    json: bool,
) -> Result<ExitCode, UsageError> {
    let cache = cache.unwrap_or_else(|| out.join(".cache"));
    let opts = BuildOptions {
        out: out.to_path_buf(),
        cache,
        quiet: false,
    };
    let m = chrysalis_images::build(recipe, &opts).map_err(|e| usage(recipe, e))?;
    if json {
        println!("{}", m.to_json().map_err(|e| usage(out, e))?.trim_end());
    } else {
        print_summary(&m);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(m: &Manifest) {
    println!("image {} (recipe sha256 {})", m.name, m.recipe_sha256);
    for (role, c) in &m.components {
        println!("  {role:<13} {:<16} sha256 {}", c.file, c.sha256);
    }
    println!(
        "  enclave       /init            sha256 {}",
        m.enclave.sha256
    );
    println!("  cmdline       {}", m.cmdline);
    for t in &m.measurements.tdx {
        println!(
            "  tdx {} MiB: mr_td {}\n      rtmr1 {}\n      rtmr2 {}",
            t.memory >> 20,
            t.mr_td,
            t.rtmr[1].as_deref().unwrap_or("-"),
            t.rtmr[2].as_deref().unwrap_or("-")
        );
    }
    for s in &m.measurements.snp {
        println!("  snp {} x{}: {}", s.cpu_type, s.vcpus, s.measurement);
    }
    println!(
        "  simulated (NOT CONFIDENTIAL): {}",
        m.measurements.simulated
    );
    for n in &m.measurements.notes {
        println!("  note: {n}");
    }
}

/// Recompute every hash and measurement of an image directory.
pub fn verify(dir: &Path, json: bool) -> Result<ExitCode, UsageError> {
    let m = Manifest::load(dir).map_err(|e| usage(dir, e))?;
    let report = m.verify(dir);
    if json {
        let v = serde_json::json!({
            "image": m.name,
            "ok": report.ok(),
            "checked": report.checked,
            "problems": report.problems,
        });
        println!("{v:#}");
    } else {
        for c in &report.checked {
            println!("ok       {c}");
        }
        for p in &report.problems {
            println!("MISMATCH {p}");
        }
        if report.ok() {
            println!("verdict: image {} matches its manifest", m.name);
        } else {
            println!(
                "verdict: image {} does NOT match its manifest ({} problem(s)); do not deploy it",
                m.name,
                report.problems.len()
            );
        }
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Emit the policy that accepts exactly this image. The image is verified first.
pub fn policy(
    dir: &Path,
    allow_simulated: bool,
    out: Option<&Path>,
) -> Result<ExitCode, UsageError> {
    let m = Manifest::load(dir).map_err(|e| usage(dir, e))?;
    let report = m.verify(dir);
    if !report.ok() {
        for p in &report.problems {
            eprintln!("MISMATCH {p}");
        }
        eprintln!("error: the image does not match its manifest; no policy emitted");
        return Ok(ExitCode::from(1));
    }
    let text = m.policy(allow_simulated).map_err(|e| usage(dir, e))?;
    if allow_simulated {
        eprintln!("WARNING: this policy accepts the SIMULATED platform, which is NOT CONFIDENTIAL");
    }
    match out {
        Some(p) => std::fs::write(p, text).map_err(|e| usage(p, e))?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
