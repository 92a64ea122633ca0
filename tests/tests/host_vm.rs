//! A real VM: the host agent boots QEMU (TCG) from an image built by the image code from the
//! default recipe (Debian's kernel, the enclave built from this tree as /init, the default model on its own disk), the
//! enclave inside runs the simulator; a client attests through the host agent's relay and gets
//! a streamed answer to a sealed prompt. Then QEMU is killed mid-answer: the client gets an
//! error, the host relaunches the VM, and after re-attesting (new keys) the next request works.
//!
//! Needs `qemu-system-x86_64` (installed by `.ci/run`), the fixtures (`make fixtures`), the
//! model (`make model`) and the enclave binary (built by `cargo test --workspace`). Under
//! `make test` (CHRYSALIS_REQUIRE_FIXTURES=1) a missing piece fails the test.
// Test code: a failed assumption should stop the test loudly.
#![allow(clippy::panic, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrysalis_attestation::Policy;
use chrysalis_client::remote::{self, AnswerPiece};
use chrysalis_host::config::HostConfig;
use chrysalis_host::vm::VmState;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The enclave binary next to this test's target directory.
fn enclave_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    // target/debug/deps/host_vm-… → target/debug/chrysalis-enclave
    let p = exe.parent()?.parent()?.join("chrysalis-enclave");
    p.exists().then_some(p)
}

fn require(what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if std::env::var_os("CHRYSALIS_REQUIRE_FIXTURES").is_some() {
        panic!("{what} (make test provides it)");
    }
    eprintln!("SKIPPED: {what}");
    false
}

/// The default recipe (images/default.toml, the pins `make image` uses), with the debug
/// enclave this test run built and the fetched model.
fn recipe(dir: &Path, enclave: &Path, model: &Path) -> PathBuf {
    let default = std::fs::read_to_string(workspace().join("images/default.toml"))
        .expect("images/default.toml");
    let binary = "binary = \"../target/image/release/chrysalis-enclave\"";
    let model_file = "file = \"../models/SmolLM2-135M-Instruct.Q4_1.gguf\"";
    assert!(
        default.contains(binary) && default.contains(model_file),
        "default recipe changed"
    );
    let text = default
        .replace(binary, &format!("binary = \"{}\"", enclave.display()))
        .replace(model_file, &format!("file = \"{}\"", model.display()));
    let p = dir.join("vm-test.toml");
    std::fs::write(&p, text).expect("write recipe");
    p
}

fn body(max_tokens: usize) -> serde_json::Value {
    serde_json::json!({
        "model": "",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "params": {"temperature": 0.0, "max_tokens": max_tokens, "top_p": 1.0, "top_k": 0, "seed": 0, "stop": []},
    })
}

async fn wait_for(vm: &chrysalis_host::vm::VmHandle, want: VmState, secs: u64) {
    let mut rx = vm.subscribe();
    let r = tokio::time::timeout(Duration::from_secs(secs), rx.wait_for(|s| *s == want)).await;
    assert!(
        r.is_ok(),
        "VM not {want:?} within {secs}s: state {:?}, last error {:?}",
        vm.state(),
        vm.last_error.lock().ok().and_then(|e| e.clone())
    );
}

#[test]
fn host_agent_boots_a_real_vm_serves_a_sealed_answer_and_relaunches_after_a_crash() {
    let fixtures = workspace().join("target/fixtures");
    let model = workspace().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let qemu_ok = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let Some(enclave) = enclave_binary() else {
        require("target/debug/chrysalis-enclave not built", false);
        return;
    };
    if !require("qemu-system-x86_64 not installed", qemu_ok)
        || !require(
            "fixtures not fetched",
            fixtures.join("dl/libc6_2.41-12+deb13u4_amd64.deb").exists(),
        )
        || !require("model not fetched", model.exists())
    {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let image = work.path().join("image");
    let recipe = recipe(work.path(), &enclave, &model);
    let manifest = chrysalis_images::build(
        &recipe,
        &chrysalis_images::BuildOptions {
            out: image.clone(),
            cache: fixtures.join("dl"),
            quiet: true,
        },
    )
    .expect("image build");
    let policy = Policy::from_toml(&manifest.policy(true).expect("policy")).expect("parse policy");

    let config_path = work.path().join("host.toml");
    std::fs::write(
        &config_path,
        format!(
            "state_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[[vm]]\nname = \"dev\"\nimage = \"{}\"\nplatform = \"none\"\naccelerator = \"tcg\"\nvcpus = 2\nmemory = \"2G\"\nclient_listen = \"127.0.0.1:0\"\n",
            work.path().join("state").display(),
            image.display()
        ),
    )
    .expect("write config");
    let config = HostConfig::load(&config_path).expect("config");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let running = chrysalis_host::start(config).await.expect("host agent");
        let vm = running.vms[0].clone();
        let url = format!("https://{}", running.client_addrs[0]);
        let api = running.api_addr;
        wait_for(&vm, VmState::Ready, 600).await;

        // /healthz answers 200 now, /metrics shows the state.
        let health = http_get(api, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        let metrics = http_get(api, "/metrics").await;
        assert!(
            metrics.contains("chrysalis_vm_state{vm=\"dev\",state=\"ready\"} 1"),
            "{metrics}"
        );

        // Attest through the relay against the image's policy; a verified, streamed answer.
        let now = chrysalis_client::inputs::now();
        let mut conn = remote::connect(&url, &policy, now)
            .await
            .expect("attest through the host");
        let fresh = remote::attest_fresh(&mut conn, &policy, now)
            .await
            .expect("fresh evidence");
        let first_key = fresh.hpke_public_key;
        let mut text = String::new();
        let usage = remote::generate(&mut conn, &body(2), |p| {
            if let AnswerPiece::Text(t) = p {
                text.push_str(t);
            }
        })
        .await
        .expect("answer");
        assert!(!text.trim().is_empty(), "empty answer, usage {usage}");

        // Kill QEMU mid-answer: the client gets an error, never a truncated answer as complete.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pid = vm.pid.lock().ok().and_then(|p| *p).expect("qemu pid");
        let mut conn2 = remote::connect(&url, &policy, now)
            .await
            .expect("attest again");
        let streaming = tokio::spawn(async move {
            let mut pieces = Vec::new();
            let r = remote::generate(&mut conn2, &body(200), |p| {
                pieces.push(p.clone());
                let _ = tx.send(());
            })
            .await;
            (r, pieces)
        });
        tokio::time::timeout(Duration::from_secs(600), rx.recv())
            .await
            .expect("no first chunk");
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
        assert!(killed.is_ok_and(|s| s.success()), "kill qemu");
        let (result, pieces) = tokio::time::timeout(Duration::from_secs(60), streaming)
            .await
            .expect("the client hung after the VM died")
            .expect("join");
        assert!(
            result.is_err(),
            "an interrupted answer was reported complete: {pieces:?}"
        );
        assert!(!pieces.iter().any(|p| matches!(p, AnswerPiece::Done(_))));

        // The host relaunches the VM; the old keys are gone, a re-attested connection works.
        wait_for(&vm, VmState::Failed, 60).await;
        wait_for(&vm, VmState::Ready, 600).await;
        let history = vm.history.lock().map(|h| h.clone()).unwrap_or_default();
        eprintln!("VM history: {history:#?}");
        assert!(
            vm.counters
                .restarts
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 1,
            "no relaunch: {history:?}"
        );
        let old = remote::generate(&mut conn, &body(2), |_| {}).await;
        assert!(
            old.is_err(),
            "a connection attested before the crash still worked"
        );
        let now = chrysalis_client::inputs::now();
        let mut conn3 = remote::connect(&url, &policy, now)
            .await
            .expect("re-attest");
        assert_ne!(
            conn3.attestation.hpke_public_key, first_key,
            "keys survived a relaunch"
        );
        let mut text = String::new();
        remote::generate(&mut conn3, &body(2), |p| {
            if let AnswerPiece::Text(t) = p {
                text.push_str(t);
            }
        })
        .await
        .expect("answer after relaunch");
        assert!(!text.trim().is_empty());
        running.stop().await;
    });
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect api");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}
