//! A stage starting while its brokers answer slowly (a broker loaded after an outage, as the
//! chaos soak's rolling restart met one) still finds them: its metadata probe keeps its
//! connection and waits longer on each attempt, instead of timing out a new client's handshake
//! every time.
//!
//! The broker here is the local stack's, behind a proxy that holds every byte the broker sends
//! for [`DELAY`]: a handshake (ApiVersions, then Metadata) takes twice that.

use std::time::{Duration, Instant};

use boomerang_runtime::http::Readiness;
use boomerang_runtime::kafka::KafkaArgs;
use boomerang_runtime::metrics::Metrics;
use boomerang_runtime::service::{StageContext, wait_for_brokers};
use boomerang_testkit::Stack;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Longer than the probe's first timeout (2 s), so no single answer arrives within it.
const DELAY: Duration = Duration::from_millis(2_500);

/// Forwards connections to `upstream`; what comes back is held for `delay` first.
async fn slow_proxy(upstream: String, delay: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let (held, mut due) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(read) = server_read.read(&mut buffer).await {
                        if read == 0
                            || held
                                .send((Instant::now(), buffer[..read].to_vec()))
                                .is_err()
                        {
                            break;
                        }
                    }
                });
                while let Some((arrived, bytes)) = due.recv().await {
                    tokio::time::sleep_until((arrived + delay).into()).await;
                    if client_write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn brokers_that_answer_slower_than_the_first_timeout_are_found() {
    let stack = Stack::from_env();
    let proxy = slow_proxy(stack.kafka_brokers.clone(), DELAY).await;
    let context = StageContext {
        stage: "slow-brokers-test",
        metrics: Metrics::for_tests(),
        readiness: Readiness::new("starting"),
        shutdown: CancellationToken::new(),
    };
    let started = Instant::now();
    let found = tokio::time::timeout(
        Duration::from_secs(60),
        wait_for_brokers(&KafkaArgs::for_brokers(proxy), &context),
    )
    .await;
    assert_eq!(
        found,
        Ok(true),
        "the brokers behind a {DELAY:?} proxy were not found in 60 s"
    );
    assert!(
        started.elapsed() >= 2 * DELAY,
        "the proxy did not hold the answers: found in {:?}",
        started.elapsed()
    );
}
