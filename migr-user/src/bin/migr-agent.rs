//! migr-agent: the per-node daemon (see `migr_user::agent`).
fn main() -> anyhow::Result<()> {
    migr_user::agent::main()
}
