//! A child process owned by a test: output captured to a log file, readiness by a
//! stdout line, killed and reaped on drop (also when the test panics).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// A running child process whose stdout and stderr go to `<log_dir>/<name>.log`.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    lines: UnboundedReceiver<String>,
}

impl Proc {
    /// Starts `program args...`, appending its output to `<log_dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        Proc::spawn_with_env(name, program, args, &[], log_dir)
    }

    /// As [`Proc::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let open_log = || -> anyhow::Result<File> {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("cannot open log file {}", log.display()))
        };
        let mut header = open_log()?;
        writeln!(header, "$ {} {}", program.display(), args.join(" "))?;
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(open_log()?))
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout pipe"))?;
        let (tx, rx) = unbounded_channel();
        let sink = open_log()?;
        std::thread::Builder::new()
            .name(format!("{name}-stdout"))
            .spawn(move || copy_lines(stdout, sink, tx))
            .context("cannot start the output reader thread")?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
            lines: rx,
        })
    }

    /// Name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the captured output.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits for the first stdout line starting with `prefix` and returns it.
    pub async fn wait_for_line(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) if line.starts_with(prefix) => return Ok(line),
                Ok(Some(_)) => continue,
                Ok(None) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!(
                        "{} exited ({status:?}) before printing {prefix:?}; log: {}",
                        self.name,
                        self.log.display()
                    )
                }
                Err(_) => bail!(
                    "{} did not print {prefix:?} within {timeout:?}; log: {}",
                    self.name,
                    self.log.display()
                ),
            }
        }
    }

    /// Fails if the process has already exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!(
                "{} exited ({status}); log: {}",
                self.name,
                self.log.display()
            ),
            None => Ok(()),
        }
    }

    /// Sends `signal` (a `kill -s` name such as `STOP` or `CONT`) to the process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -s {signal} {}: {status}", self.name);
        Ok(())
    }

    /// Kills the process (SIGKILL) and reaps it; harmless if it already exited.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies each stdout line to the log file and to the readiness channel until EOF.
fn copy_lines(stdout: impl std::io::Read, mut sink: File, tx: UnboundedSender<String>) {
    let reader = BufReader::new(stdout);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(sink, "{line}");
        let _ = tx.send(line);
    }
}
