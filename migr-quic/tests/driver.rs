//! The tokio driver over real UDP sockets on loopback (127.0.0.1 and
//! 127.0.0.2, both local on Linux; no privileges needed): two clients with
//! different strategies follow one server to its new address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use migr_common::cid::CidConfig;
use migr_quic::driver::{Client, Server};
use migr_quic::tls::{self, SelfSigned};
use migr_quic::{ClientMigrationConfig, RoutableCidGenerator, ServerEndpointConfig, Strategy};
use quinn_proto::TransportConfig;

async fn echo_server(server: Arc<Server>) {
    while let Some(conn) = server.accept().await {
        tokio::spawn(async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let request = recv.read_to_end(1 << 16).await?;
                    send.write_all(&request).await?;
                    send.finish()
                });
            }
        });
    }
}

async fn echo(client: &Client, index: usize) -> anyhow::Result<()> {
    let payload = vec![index as u8; 1024];
    let (mut send, mut recv) = client.open_bi().await?;
    send.write_all(&payload).await?;
    send.finish()?;
    let response = recv.read_to_end(1 << 16).await?;
    anyhow::ensure!(response == payload, "echo {index} differs");
    Ok(())
}

#[tokio::test(flavor = "current_thread")]
async fn clients_follow_the_server_to_its_new_address() -> anyhow::Result<()> {
    let cert = SelfSigned::generate(&["migr.test"])?;
    let config = ServerEndpointConfig {
        server_config: Arc::new(cert.server_config(TransportConfig::default())?),
        cid_generator: RoutableCidGenerator::new(CidConfig::new(8, 1, 2).unwrap(), 7).unwrap(),
        pool: Vec::new(),
    };
    let old_bind: SocketAddr = "127.0.0.1:0".parse()?;
    let server = Arc::new(Server::bind(config, old_bind).await?);
    let old = server.addresses()[0];
    tokio::spawn(echo_server(server.clone()));

    let mut clients = Vec::new();
    for strategy in [Strategy::ProactiveExplicit, Strategy::ReactiveExplicit] {
        let client_config = tls::client_config(cert.cert_der.clone(), TransportConfig::default())?;
        let client = Client::connect(
            client_config,
            ClientMigrationConfig::new(strategy),
            "127.0.0.1:0".parse()?,
            old,
            "migr.test",
        )
        .await?;
        echo(&client, 0).await?;
        clients.push(client);
    }
    // Wait for both HELLOs to be answered, then move.
    tokio::time::timeout(Duration::from_secs(5), async {
        while !clients.iter().all(|c| c.is_negotiated()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;

    let new = server.add_address("127.0.0.2:0".parse()?).await?;
    let acked =
        tokio::time::timeout(Duration::from_secs(5), server.announce_migration(new)).await??;
    assert_eq!(acked, 2, "both clients acknowledged");
    assert!(server.remove_address(old));

    let run = async {
        for index in 1..50 {
            for client in &clients {
                echo(client, index).await?;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(20), run).await??;
    for client in &clients {
        assert_eq!(client.server_address(), new);
    }
    Ok(())
}

/// Unidirectional streams of the application's cross the driver whole, in
/// both directions, next to the extension's control streams: one that looks
/// like an HTTP/3 control stream, one that begins like a control stream and
/// ends early (the extension read all of it), and a long one.
#[tokio::test(flavor = "current_thread")]
async fn application_uni_streams_pass_through_the_driver() -> anyhow::Result<()> {
    let cert = SelfSigned::generate(&["migr.test"])?;
    let config = ServerEndpointConfig {
        server_config: Arc::new(cert.server_config(TransportConfig::default())?),
        cid_generator: RoutableCidGenerator::new(CidConfig::new(8, 1, 2).unwrap(), 7).unwrap(),
        pool: vec!["127.0.0.2:4433".parse()?],
    };
    let server = Arc::new(Server::bind(config, "127.0.0.1:0".parse()?).await?);
    let address = server.addresses()[0];
    let mut long = vec![0x21];
    long.extend((0..50_000u32).map(|i| (i % 253) as u8));
    let streams: Vec<Vec<u8>> = vec![vec![0x00, 0x04, 0x00], vec![0xc0, 0x00, 0x00], long];

    // The server application reads each stream and sends it back on one of its own.
    let acceptor = server.clone();
    let count = streams.len();
    let server_task = tokio::spawn(async move {
        let conn = acceptor.accept().await.expect("a connection");
        for _ in 0..count {
            let mut recv = conn.accept_uni().await?;
            let data = recv.read_to_end(1 << 20).await?;
            let mut send = conn.open_uni().await?;
            send.write_all(&data).await?;
            send.finish()?;
        }
        anyhow::Ok(conn)
    });

    let client_config = tls::client_config(cert.cert_der.clone(), TransportConfig::default())?;
    let client = Client::connect(
        client_config,
        ClientMigrationConfig::new(Strategy::PoolOfAddresses),
        "127.0.0.1:0".parse()?,
        address,
        "migr.test",
    )
    .await?;
    let run = async {
        for data in &streams {
            let mut send = client.open_uni().await?;
            send.write_all(data).await?;
            send.finish()?;
            let mut recv = client.accept_uni().await?;
            let back = recv.read_to_end(1 << 20).await?;
            anyhow::ensure!(
                back == *data,
                "stream of {} bytes came back changed",
                data.len()
            );
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), run).await??;
    tokio::time::timeout(Duration::from_secs(5), server_task).await???;
    // The extension worked alongside: negotiated, and the pool arrived.
    tokio::time::timeout(Duration::from_secs(5), async {
        while !client.is_negotiated() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    let events = client.try_events();
    assert!(
        events.iter().any(|e| *e
            == migr_quic::ClientEvent::PoolAddress {
                address: "127.0.0.2:4433".parse().unwrap()
            }),
        "{events:?}"
    );
    Ok(())
}

/// quinn-proto gives a drained connection's handle to the next connection.
/// The driver used to keep the first connection's loss under that handle, so
/// the second client's connection counted as lost at once and its requests
/// went unanswered. Two clients one after the other on one server: the
/// second gets the first one's handle and must still be served, and the
/// first connection's application handle must not reach the second one.
#[tokio::test(flavor = "current_thread")]
async fn a_reused_connection_handle_is_a_new_connection() -> anyhow::Result<()> {
    let cert = SelfSigned::generate(&["migr.test"])?;
    let config = ServerEndpointConfig {
        server_config: Arc::new(cert.server_config(TransportConfig::default())?),
        cid_generator: RoutableCidGenerator::new(CidConfig::new(8, 1, 2).unwrap(), 7).unwrap(),
        pool: Vec::new(),
    };
    let server = Arc::new(Server::bind(config, "127.0.0.1:0".parse()?).await?);
    let address = server.addresses()[0];
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = server.clone();
    tokio::spawn(async move {
        while let Some(conn) = acceptor.accept().await {
            let _ = accepted_tx.send(conn.clone());
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let request = recv.read_to_end(1 << 16).await?;
                        send.write_all(&request).await?;
                        send.finish()
                    });
                }
            });
        }
    });

    let connect = || async {
        let client_config = tls::client_config(cert.cert_der.clone(), TransportConfig::default())?;
        Client::connect(
            client_config,
            ClientMigrationConfig::new(Strategy::ReactiveExplicit),
            "127.0.0.1:0".parse()?,
            address,
            "migr.test",
        )
        .await
    };

    let first = connect().await?;
    for index in 0..3 {
        echo(&first, index).await?;
    }
    let first_conn = accepted.recv().await.expect("first connection");
    first.close().await;
    drop(first);
    // The server forgets the first connection once it is drained.
    tokio::time::timeout(Duration::from_secs(10), async {
        while server.open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;

    let second = connect().await?;
    let second_conn = accepted.recv().await.expect("second connection");
    assert_eq!(
        second_conn.handle(),
        first_conn.handle(),
        "quinn-proto reused the handle (the case under test)"
    );
    tokio::time::timeout(Duration::from_secs(10), async {
        for index in 0..10 {
            echo(&second, index).await?;
        }
        anyhow::Ok(())
    })
    .await??;
    // The first connection's handle stays lost, and does not touch the second.
    assert!(first_conn.accept_bi().await.is_err());
    assert!(first_conn.stats().is_none());
    first_conn.close(1, b"stale");
    echo(&second, 99).await?;
    assert_eq!(server.open_connections(), 1);
    Ok(())
}
