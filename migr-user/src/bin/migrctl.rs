//! migrctl: the command line for migr-agent (see `migr_user::ctl`).
fn main() {
    std::process::exit(migr_user::ctl::main());
}
