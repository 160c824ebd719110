//! Link-time fixes so `target/release/trainer-torch` runs without LD_LIBRARY_PATH and
//! sees CUDA. (`trainer` itself links no libtorch.)

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") else { return };
    let lib = std::path::PathBuf::from(lib);
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
