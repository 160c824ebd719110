//! Link-time fixes so `target/release/trainer-torch` runs without LD_LIBRARY_PATH and
//! sees CUDA. (`trainer` itself links no libtorch.)

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    git_revision();
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else { return };
    let lib = std::path::PathBuf::from(lib);
    // PyTorch's wheel records its version beside lib/ (torch/version.py).
    if let Ok(text) = std::fs::read_to_string(lib.join("../version.py")) {
        if let Some(v) = text.lines().find_map(|l| l.strip_prefix("__version__ = ")) {
            println!("cargo:rustc-env=TRAINER_LIBTORCH_VERSION={}", v.trim().trim_matches(['\'', '"']));
        }
    }
    // An rpath to the libtorch we built against: no LD_LIBRARY_PATH needed at run time.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // The linker drops libtorch_cuda (nothing references it by symbol), which silently
    // leaves CUDA unavailable; keep it when the libtorch has one.
    if lib.join("libtorch_cuda.so").exists() {
        for arg in ["-Wl,--no-as-needed", "-ltorch_cuda", "-Wl,--as-needed"] {
            println!("cargo:rustc-link-arg-bin=trainer-torch={arg}");
        }
    }
}

/// TRAINER_GIT_REV for the start event: the commit built, "-dirty" with local changes.
fn git_revision() {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(rev) = git(&["rev-parse", "--short=12", "HEAD"]) else { return };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!("cargo:rustc-env=TRAINER_GIT_REV={rev}{}", if dirty { "-dirty" } else { "" });
    for path in ["HEAD"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])) {
        println!("cargo:rerun-if-changed={r}");
    }
}
