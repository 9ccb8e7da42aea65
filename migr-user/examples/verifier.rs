//! Loads the datapath's object with a verbose verifier log (debugging aid).
fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .init();
    let mut ebpf = aya::EbpfLoader::new()
        .verifier_log_level(aya::VerifierLogLevel::VERBOSE | aya::VerifierLogLevel::STATS)
        .load(migr_user::datapath::XDP_OBJECT)
        .expect("object");
    for name in ["migr", "migr_pass"] {
        let prog: &mut aya::programs::Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        match prog.load() {
            Ok(()) => {
                let info = prog.info().unwrap();
                println!(
                    "{name}: loaded; verified instructions {:?}, size {} bytes",
                    info.verified_instruction_count(),
                    info.size_translated().unwrap_or(0)
                );
            }
            Err(e) => println!("{name}: {e:?}"),
        }
    }
}
