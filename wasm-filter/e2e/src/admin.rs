//! A stand-in for the `kvroute` admin API: answers every request with the current worker list.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running fake admin API.
pub struct FakeAdmin {
    /// `127.0.0.1:port`.
    pub address: String,
    workers: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl FakeAdmin {
    /// Starts serving `workers` (a JSON list) on a free port.
    pub async fn start(workers: serde_json::Value) -> anyhow::Result<FakeAdmin> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let shared = Arc::new(Mutex::new(workers.to_string()));
        let list = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let _ = sock.set_nodelay(true);
                let list = list.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    loop {
                        let Ok(n) = sock.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let body = list.lock().map(|b| b.clone()).unwrap_or_default();
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                 content-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if sock.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Ok(FakeAdmin {
            address,
            workers: shared,
            task,
        })
    }

    /// Replaces the list served from now on.
    pub fn set_workers(&self, workers: serde_json::Value) {
        if let Ok(mut w) = self.workers.lock() {
            *w = workers.to_string();
        }
    }
}

impl Drop for FakeAdmin {
    fn drop(&mut self) {
        self.task.abort();
    }
}
