//! A terminal program driven through tmux (Debian `tmux`): started in a
//! detached session of a tmux server of its own (`-L`, so no one else's
//! sessions are touched), its screen read with `capture-pane`, keys sent with
//! `send-keys`. The pane stays after the program exits (`remain-on-exit`), so
//! its exit status and whether it left the alternate screen can be read.
//! The command is `exec`ed by the pane's shell, so the pane's PID is the
//! program's: on drop it is killed by that PID (if still a child of our tmux
//! server), then the server.
use crate::util::{TempDir, is_alive, proc_stat};
use anyhow::{Context, Result, bail};
use std::process::Command;

pub struct Tmux {
    socket: String,
    server_pid: Option<i32>,
    pane_pid: Option<i32>,
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
            pane_pid: None,
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
            &format!("exec {command}"),
        ])?;
        t.server_pid = t.format("#{pid}")?.trim().parse().ok();
        t.pane_pid = t.format("#{pane_pid}")?.trim().parse().ok();
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

    /// PID of the program in the pane.
    pub fn pane_pid(&self) -> Option<i32> {
        self.pane_pid
    }

    /// What each thread of the program is doing (`/proc/PID/task/*`: name,
    /// state, wait channel, kernel stack when readable): evidence for a
    /// program that does not react.
    pub fn threads(&self) -> String {
        let Some(pid) = self.pane_pid else {
            return "pane PID unknown".into();
        };
        self.threads_of(pid)
    }
    fn threads_of(&self, pid: i32) -> String {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return format!("PID {pid} gone");
        };
        let mut out = String::new();
        for e in rd.flatten() {
            let d = e.path();
            let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
            let stat = read("stat");
            let state = stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)).unwrap_or("?");
            out.push_str(&format!(
                "tid {} {} state {state} wchan {} syscall {}\n{}",
                e.file_name().to_string_lossy(),
                read("comm").trim(),
                read("wchan").trim(),
                read("syscall").trim(),
                read("stack")
            ));
        }
        out
    }

    /// `Some(exit status)` once the program in the pane has exited.
    ///
    /// Debian's tmux (built with libutempter) can lose the program's exit:
    /// when the pane's terminal closes, tmux removes its utmp record through
    /// libutempter, which sets SIGCHLD to SIG_DFL while it forks and waits
    /// for its helper; a program exiting in that window (it closes its
    /// terminal a moment before it becomes a zombie) sends a SIGCHLD that is
    /// discarded, tmux never reaps it, and the pane stays dead without a
    /// status (tmux issue #311). Seen as `pane_dead` 1 with an empty
    /// `pane_dead_status` while the program is a zombie of the server: then
    /// the server is sent the SIGCHLD it missed, so that it reaps and records
    /// the status (read at the next call).
    pub fn exited(&self) -> Result<Option<i32>> {
        if self.format("#{pane_dead}")? != "1" {
            return Ok(None);
        }
        let status = self.format("#{pane_dead_status}")?;
        if status.is_empty()
            && let (Some(pid), Some(server)) = (self.pane_pid, self.server_pid)
            && proc_stat(pid) == Some((server, 'Z'))
        {
            eprintln!("[e2e] tmux has not reaped pid {pid} (pane dead, no status): sending it the lost SIGCHLD");
            // SAFETY: kill(2) of the tmux server this value started.
            unsafe { libc::kill(server, libc::SIGCHLD) };
        }
        Ok(status.parse().ok())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Only while it is still our server's child: a reaped PID may be reused.
        if let (Some(pid), Some(server)) = (self.pane_pid, self.server_pid)
            && matches!(proc_stat(pid), Some((ppid, st)) if ppid == server && st != 'Z')
        {
            // SAFETY: kill(2) of the program this value started in its pane.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = self.run(&["kill-server"]);
        if let Some(pid) = self.server_pid
            && is_alive(pid)
        {
            // SAFETY: kill(2) of the tmux server this value started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
