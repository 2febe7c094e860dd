//! A child process owned by a test: output appended to a log file, killed and reaped on drop.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running child process.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    lines: Receiver<String>,
}

impl Proc {
    /// Starts `program args...` with stdout and stderr appended to `<log_dir>/<name>.log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let open = || -> anyhow::Result<File> {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .with_context(|| format!("opening {}", log.display()))
        };
        writeln!(open()?, "$ {} {}", program.display(), args.join(" "))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(open()?))
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut sink = open()?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(sink, "{line}");
                let _ = tx.send(line);
            }
        });
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            lines: rx,
        })
    }

    /// Waits for a stdout line starting with `prefix`.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "{}: no line `{prefix}` within {timeout:?}; see {}",
                        self.name,
                        self.log.display()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!(
                        "{}: exited before `{prefix}`; see {}",
                        self.name,
                        self.log.display()
                    )
                }
            }
        }
    }

    /// The exit status if the process has ended.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The log file's content so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where the output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Kills and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
