//! The command lines of the service and of its client, per protocol and
//! strategy. Apart from the run because they only spell out arguments:
//! which binary, which address, which options.

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use super::{BULK_BYTES, Mode, PORT, Protocol, RunConfig, SERVER_ID, TCP_PORT};
use crate::{Bins, dns, placement::Files};

/// The service, to be started in the source container; it answers at `old`
/// (QUIC: announces `new` before the move).
pub(super) fn server_command(
    bins: &Bins,
    cfg: &RunConfig,
    files: &Files,
    old: &str,
    new: &str,
) -> Command {
    let quic = cfg.protocol.quic();
    let same_ip = cfg.protocol.same_ip();
    let tcp_dns = cfg.protocol == Protocol::TcpDns;
    let udp = cfg.protocol == Protocol::Udp;
    let mut server_cmd;
    if quic {
        server_cmd = Command::new(&bins.echo);
        server_cmd
            .arg("server")
            // At the same IP, the service's own address: a wildcard socket
            // would answer from the container's first address, which a
            // QUIC client drops.
            .args([
                "--listen",
                &if same_ip {
                    old.to_string()
                } else {
                    format!("0.0.0.0:{PORT}")
                },
            ])
            .arg("--cert-out")
            .arg(files.inside.join("cert.der"))
            .args([
                "--server-id",
                SERVER_ID,
                "--cid-len",
                "8",
                "--cid-offset",
                "1",
            ])
            .args(["--server-id-len", "2"])
            .arg("--control-file")
            .arg(files.inside.join("server.ctl"));
        if cfg.strategy == "poa" {
            server_cmd.args(["--pool", &pool(new, cfg.pool_size)]);
        }
        server_cmd.args(["--ballast-mb", &cfg.ballast_mb.to_string()]);
    } else {
        server_cmd = Command::new(&bins.testbed);
        // TCP+DNS: the wildcard address, which the restored listener keeps
        // at the destination's new IP.
        let listen = if tcp_dns {
            format!("0.0.0.0:{TCP_PORT}")
        } else {
            old.to_string()
        };
        let server = if udp { "udp-server" } else { "tcp-server" };
        server_cmd.args([server, "--listen", &listen]);
        server_cmd.args(["--ballast-mb", &cfg.ballast_mb.to_string()]);
    }
    server_cmd
}

/// The client, in the client's namespace: it reaches the service at `old`
/// (TCP+DNS: by name, through `dns_server`), trusts `cert` (QUIC) and
/// writes its files under `d`.
pub(super) fn client_command(
    bins: &Bins,
    cfg: &RunConfig,
    old: &str,
    cert: &Path,
    d: &Path,
    dns_server: Option<&dns::DnsServer>,
) -> Result<Command> {
    let quic = cfg.protocol.quic();
    let tcp_dns = cfg.protocol == Protocol::TcpDns;
    let udp = cfg.protocol == Protocol::Udp;
    let mut client_cmd;
    if quic {
        client_cmd = Command::new(&bins.echo);
        client_cmd
            .arg("client")
            .args(["--server", old])
            .arg("--ca")
            .arg(cert);
        if cfg.client_probing == "plain" {
            client_cmd.arg("--plain");
        } else {
            client_cmd
                .args(["--strategy", &cfg.strategy])
                .args(["--probing", &cfg.client_probing]);
        }
        match cfg.mode {
            Mode::BackToBack => client_cmd.args(["--mode", "back-to-back"]),
            Mode::Sporadic { period_ms } => {
                client_cmd.args(["--mode", "sporadic", "--period-ms", &period_ms.to_string()])
            }
        };
    } else if tcp_dns {
        client_cmd = Command::new(&bins.testbed);
        client_cmd
            .args(["dns-client", "--dns"])
            .arg(
                dns_server
                    .as_ref()
                    .expect("a DNS server")
                    .listen
                    .to_string(),
            )
            .args(["--name", dns::NAME, "--port", &TCP_PORT.to_string()])
            .arg("--stop-file")
            .arg(d.join("client.stop"))
            .args(["--size", &cfg.request_bytes.to_string()]);
    } else {
        if cfg.mode != Mode::BackToBack {
            bail!("the TCP and UDP workloads are back to back only");
        }
        client_cmd = Command::new(&bins.testbed);
        let client = if udp { "udp-client" } else { "tcp-client" };
        client_cmd
            .args([client, "--server", old, "--stop-file"])
            .arg(d.join("client.stop"))
            .args(["--size", &cfg.request_bytes.to_string()]);
        if udp {
            client_cmd.args(["--timeout-ms", &cfg.udp_timeout_ms.to_string()]);
        } else if cfg.request_bytes >= BULK_BYTES {
            client_cmd.arg("--watch-send-queue");
        }
    }
    Ok(client_cmd)
}

/// The PoA pool: `new`, then `size - 1` addresses next to it that nobody answers at.
fn pool(new: &str, size: usize) -> String {
    let mut addrs = vec![new.to_string()];
    if let Some((ip, port)) = new.rsplit_once(':')
        && let Ok(ip) = ip.parse::<std::net::Ipv4Addr>()
    {
        let [a, b, c, d] = ip.octets();
        for i in 1..size {
            addrs.push(format!("{a}.{b}.{c}.{}:{port}", d.wrapping_add(i as u8)));
        }
    }
    addrs.join(",")
}

#[cfg(test)]
mod tests {
    use super::pool;

    #[test]
    fn the_pool_is_the_new_address_then_silent_neighbours() {
        assert_eq!(pool("10.60.12.2:4433", 1), "10.60.12.2:4433");
        assert_eq!(
            pool("10.60.12.2:4433", 3),
            "10.60.12.2:4433,10.60.12.3:4433,10.60.12.4:4433"
        );
    }
}
