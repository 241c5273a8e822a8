//! A terminal program driven through tmux (Debian `tmux`): started in a
//! detached session of a tmux server of its own (`-L`, so no one else's
//! sessions are touched), its screen read with `capture-pane`, keys sent with
//! `send-keys`. The pane stays after the program exits (`remain-on-exit`), so
//! its exit status and whether it left the alternate screen can be read.
use crate::util::{TempDir, is_alive};
use anyhow::{Context, Result, bail};
use std::process::Command;

pub struct Tmux {
    socket: String,
    server_pid: Option<i32>,
    _dir: TempDir,
}

const SESSION: &str = "e2e";

impl Tmux {
    /// Runs `command` (a shell command line) in a `width`×`height` terminal.
    pub fn start(tag: &str, command: &str, width: u16, height: u16) -> Result<Tmux> {
        let dir = TempDir::new(&format!("tmux-{tag}"))?;
        let conf = dir.path().join("tmux.conf");
        std::fs::write(&conf, "set -g remain-on-exit on\nset -g status off\n")?;
        let mut t = Tmux {
            socket: format!("ngxprobe-e2e-{tag}-{}", std::process::id()),
            server_pid: None,
            _dir: dir,
        };
        let (w, h) = (width.to_string(), height.to_string());
        let conf = conf.to_string_lossy().to_string();
        t.run(&[
            "-f",
            &conf,
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            &w,
            "-y",
            &h,
            command,
        ])?;
        t.server_pid = t.format("#{pid}")?.trim().parse().ok();
        Ok(t)
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .with_context(|| format!("tmux {args:?}"))?;
        if !out.status.success() {
            bail!("tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// A tmux format (`#{pane_dead}`, ...) of the pane.
    pub fn format(&self, fmt: &str) -> Result<String> {
        Ok(self
            .run(&["display-message", "-p", "-t", SESSION, fmt])?
            .trim()
            .to_string())
    }

    /// The pane's screen as text, one line per row.
    pub fn screen(&self) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", SESSION])
    }

    /// Sends keys as `tmux send-keys` names them (`q`, `C-c`, `Enter`).
    pub fn keys(&self, keys: &str) -> Result<()> {
        self.run(&["send-keys", "-t", SESSION, keys]).map(|_| ())
    }

    /// `Some(exit status)` once the program in the pane has exited.
    pub fn exited(&self) -> Result<Option<i32>> {
        if self.format("#{pane_dead}")? != "1" {
            return Ok(None);
        }
        Ok(self.format("#{pane_dead_status}")?.parse().ok())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        if let Some(pid) = self.server_pid
            && is_alive(pid)
        {
            // SAFETY: kill(2) of the tmux server this value started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
