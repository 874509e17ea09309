//! A stage binary under test, and what it answers over HTTP.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use crate::{free_port, poll_until};

/// One HTTP client for every poll: `reqwest::get` builds a client per call, which loads the
/// system's root certificates each time — enough CPU, polled every 100 ms, to disturb the
/// benchmarks that share the machine. No idle connections are kept, so the client can serve
/// the many test runtimes without handing one a connection that belongs to another.
pub(crate) fn http_client() -> &'static reqwest::Client {
    static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            // Invariant: building fails only if the TLS backend cannot initialise, which
            // would make every HTTP call of the tests fail anyway.
            .expect("HTTP client")
    });
    &CLIENT
}

/// A binary under test; killed (SIGKILL) on drop if still running.
pub struct StageProcess {
    child: Child,
    pub http_address: String,
}

impl StageProcess {
    /// Starts `binary` with `arguments`, its endpoints on a free port, logs to the test's stderr.
    pub fn start(binary: &str, arguments: &[&str], environment: &[(&str, &str)]) -> Self {
        let http_address = format!("127.0.0.1:{}", free_port());
        let child = Command::new(binary)
            .args(arguments)
            .arg("--http-listen")
            .arg(&http_address)
            .envs(environment.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {binary}: {error}"));
        Self {
            child,
            http_address,
        }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has not exited (yet).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_address)
    }

    /// GETs an endpoint: `Some((status, body))`, or `None` while nothing listens.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = http_client().get(self.url(path)).send().await.ok()?;
        let status = response.status().as_u16();
        let body = response.text().await.ok()?;
        Some((status, body))
    }

    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// `kill -9`: no shutdown, no final commit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, polling; panics after `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let child = &mut self.child;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if started.elapsed() > deadline {
                panic!("process did not exit within {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A stage's current `/metrics` text (empty while it does not answer).
pub async fn metrics(process: &StageProcess) -> String {
    process
        .get("/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Waits for a stage's `/readyz` to answer 200.
pub async fn wait_ready(process: &StageProcess) {
    poll_until("the stage to be ready", Duration::from_secs(60), || async {
        process
            .get("/readyz")
            .await
            .filter(|(status, _)| *status == 200)
    })
    .await;
}
