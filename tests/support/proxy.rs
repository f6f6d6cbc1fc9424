//! Runs the real `visa-proxy` binary on port 0 with a generated config and finds its address.

#![allow(dead_code)] // Each test crate uses a different part of it.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proxy {
    pub child: Child,
    pub base: String,
    pub dir: tempfile::TempDir,
}

impl Proxy {
    /// Start with this config text; `env` adds environment variables.
    pub fn start(config: &str, env: &[(&str, &str)]) -> Self {
        Self::try_start(config, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Start, or return what the process printed when it did not come up.
    pub fn try_start(config: &str, env: &[(&str, &str)]) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log_path = dir.path().join("stderr.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_visa-proxy"));
        // Each proxy gets its own profile database unless the test names one.
        cmd.env("VISA_PROFILES_DB", dir.path().join("profiles.sqlite"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env_remove("VISA_ADMIN_KEY")
            .env_remove("VISA_LISTEN")
            .env("RUST_LOG", "visa_proxy=info,warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(90)).unwrap_or_default();
        match line.trim().strip_prefix("visa-proxy listening on ") {
            Some(base) => Ok(Self {
                child,
                base: base.to_owned(),
                dir,
            }),
            None => {
                let _ = child.kill();
                let status = child.wait().ok();
                let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
                Err(format!("proxy did not start (exit {status:?}): {stderr}"))
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The Prometheus text of `/metrics`, read with the admin key `admin`.
    pub async fn metrics(&self, admin: &str) -> String {
        let r = reqwest::Client::new()
            .get(self.url("/metrics"))
            .bearer_auth(admin)
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(r.status(), 200, "GET /metrics");
        r.text().await.expect("the metrics text")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    /// Wait for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
