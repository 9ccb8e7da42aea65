//! Fails early, with a fix, when bpf-linker is missing.
fn main() {
    println!("cargo:rerun-if-env-changed=PATH");
    if which::which("bpf-linker").is_err() {
        println!(
            "cargo:warning=bpf-linker not found in PATH; run `cargo xtask setup` to install it"
        );
    }
}
