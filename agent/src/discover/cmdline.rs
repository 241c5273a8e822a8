//! Recognising nginx processes from what /proc shows of them: the executable
//! path and the command line (which nginx overwrites with its process title).
use std::path::{Path, PathBuf};

/// Config path nginx uses when started without `-c`. We never run the binary
/// to ask (`nginx -V` would execute code from an arbitrary path as root), so
/// we assume the compiled-in default of the Debian/Ubuntu packages, the
/// nginx.org packages and the official Docker images: `--conf-path=/etc/nginx/nginx.conf`.
/// Builds with another default (e.g. OpenResty's /usr/local/openresty/nginx/conf)
/// still get a stable key, just not their real path.
pub(super) const DEFAULT_CONF_PATH: &str = "/etc/nginx/nginx.conf";

/// What a process's command line says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Title {
    /// "nginx: master process <original argv joined by spaces>".
    Master { argv: Vec<String> },
    /// "nginx: worker process" (also "... is shutting down" during a reload).
    Worker,
    /// Cache manager/loader (and OpenResty's privileged agent): nginx processes
    /// that belong to an instance but handle no client connections.
    Helper,
    /// Title not rewritten: plain NUL-separated argv. Only a single-process
    /// nginx (`master_process off`) or one that is still starting looks like this.
    Untitled { argv: Vec<String> },
    /// A rewritten title that is not one of nginx's.
    Other,
}

/// Classifies the raw bytes of /proc/PID/cmdline.
pub(super) fn classify_cmdline(raw: &[u8]) -> Title {
    // nginx copies its title over argv[0] and pads the rest of the argv/environ
    // area with NULs, so the title is everything before the first NUL.
    let first = raw.split(|&b| b == 0).next().unwrap_or(&[]);
    let first = String::from_utf8_lossy(first);
    let Some(title) = first.strip_prefix("nginx: ") else {
        return Title::Untitled { argv: split_argv(raw) };
    };
    if let Some(rest) = title.strip_prefix("master process") {
        // The rest is the original argv joined with single spaces; arguments
        // containing spaces (typically `-g '...'`) can no longer be told apart.
        return Title::Master {
            argv: rest.split_whitespace().map(str::to_owned).collect(),
        };
    }
    if title.starts_with("worker process") {
        return Title::Worker;
    }
    const HELPERS: [&str; 3] = [
        "cache manager process",
        "cache loader process",
        "privileged agent process",
    ];
    if HELPERS.iter().any(|h| title.starts_with(h)) {
        return Title::Helper;
    }
    Title::Other
}

fn split_argv(raw: &[u8]) -> Vec<String> {
    raw.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Strips the " (deleted)" the kernel appends to /proc/PID/exe once the binary
/// was replaced on disk (package upgrade, nginx binary upgrade).
pub(super) fn exe_path(link_target: &str) -> &str {
    link_target.strip_suffix(" (deleted)").unwrap_or(link_target)
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether a binary path names an nginx build: "nginx", "nginx-debug", and
/// OpenResty (its binary is nginx, sometimes reached as "openresty").
pub(super) fn is_nginx_binary_name(path: &str) -> bool {
    let base = basename(exe_path(path));
    base.starts_with("nginx") || base.starts_with("openresty")
}

/// The options of an nginx command line that matter to us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct NginxArgs {
    pub conf: Option<String>,
    pub prefix: Option<String>,
    /// `-s`, `-t`, `-T`, `-v`, `-V`, `-h`, `-?`: a short-lived control
    /// invocation (signal sender, config test), never a server.
    pub control: bool,
}

/// Parses nginx options the way nginx's ngx_get_options does: flags may be
/// combined (`-tq`), and option values may be attached (`-c/x.conf`) or follow
/// as the next argument. `args` excludes argv[0].
pub(super) fn parse_nginx_args(args: &[String]) -> NginxArgs {
    let mut out = NginxArgs::default();
    let mut i = 0;
    while i < args.len() {
        // Non-option words cannot occur in a real nginx argv; in a master's
        // title they are the space-separated remains of a `-g` value. Skip them.
        let Some(flags) = args[i].strip_prefix('-') else {
            i += 1;
            continue;
        };
        for (pos, flag) in flags.char_indices() {
            if !matches!(flag, 'c' | 'p' | 'g' | 'e' | 's') {
                out.control |= matches!(flag, 't' | 'T' | 'v' | 'V' | 'h' | '?');
                continue;
            }
            let attached = &flags[pos + flag.len_utf8()..];
            let value = if attached.is_empty() {
                i += 1;
                args.get(i).cloned()
            } else {
                Some(attached.to_owned())
            };
            match flag {
                'c' => out.conf = value,
                'p' => out.prefix = value,
                's' => out.control = true,
                _ => {}
            }
            break;
        }
        i += 1;
    }
    out
}

/// The config path an nginx runs with: `-c` if given (a relative one is
/// relative to the `-p` prefix, as nginx resolves it), else the default.
/// Without `-p` a relative `-c` is kept as given: nginx would resolve it against
/// its compiled-in prefix, which we do not know.
pub(super) fn resolve_conf_path(args: &NginxArgs) -> String {
    let Some(conf) = args.conf.as_deref() else {
        return DEFAULT_CONF_PATH.to_owned();
    };
    let joined = match args.prefix.as_deref() {
        Some(prefix) if !conf.starts_with('/') => Path::new(prefix).join(conf),
        _ => PathBuf::from(conf),
    };
    // `components()` drops inner "." parts, so "-p /x -c ./n.conf" and
    // "-c /x/n.conf" give the same key.
    joined.components().collect::<PathBuf>().to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn master_title_with_c_and_g() {
        let raw = b"nginx: master process /usr/sbin/nginx -c /etc/x.conf -g daemon off; pid /run/x.pid;\0\0\0\0";
        let Title::Master { argv } = classify_cmdline(raw) else {
            panic!("not a master")
        };
        assert_eq!(argv[0], "/usr/sbin/nginx");
        let args = parse_nginx_args(&argv[1..]);
        assert_eq!(args.conf.as_deref(), Some("/etc/x.conf"));
        assert_eq!(args.prefix, None);
        assert!(!args.control);
        assert_eq!(resolve_conf_path(&args), "/etc/x.conf");
    }

    #[test]
    fn worker_and_helper_titles() {
        assert_eq!(classify_cmdline(b"nginx: worker process\0\0\0"), Title::Worker);
        assert_eq!(
            classify_cmdline(b"nginx: worker process is shutting down\0"),
            Title::Worker
        );
        assert_eq!(classify_cmdline(b"nginx: cache manager process\0"), Title::Helper);
        assert_eq!(classify_cmdline(b"nginx: cache loader process\0"), Title::Helper);
        assert_eq!(classify_cmdline(b"nginx: something else\0"), Title::Other);
    }

    #[test]
    fn untitled_argv_is_nul_separated() {
        let t = classify_cmdline(b"/usr/sbin/nginx\0-c\0/etc/my nginx.conf\0");
        assert_eq!(
            t,
            Title::Untitled {
                argv: vec!["/usr/sbin/nginx".into(), "-c".into(), "/etc/my nginx.conf".into()]
            }
        );
        // A process whose argv[0] merely starts with "nginx" is not titled.
        assert!(matches!(
            classify_cmdline(b"nginx-prometheus-exporter\0--nginx.scrape-uri\0"),
            Title::Untitled { .. }
        ));
        assert!(matches!(classify_cmdline(b""), Title::Untitled { .. }));
    }

    #[test]
    fn relative_conf_is_relative_to_prefix() {
        let args = parse_nginx_args(&words("-p /opt/app/ -c conf/nginx.conf"));
        assert_eq!(resolve_conf_path(&args), "/opt/app/conf/nginx.conf");
        let args = parse_nginx_args(&words("-c ./nginx.conf -p /opt/app"));
        assert_eq!(resolve_conf_path(&args), "/opt/app/nginx.conf");
        // Absolute -c ignores the prefix.
        let args = parse_nginx_args(&words("-p /opt/app -c /etc/n.conf"));
        assert_eq!(resolve_conf_path(&args), "/etc/n.conf");
        // Relative -c without -p is kept as given.
        let args = parse_nginx_args(&words("-c conf/nginx.conf"));
        assert_eq!(resolve_conf_path(&args), "conf/nginx.conf");
    }

    #[test]
    fn attached_and_combined_options() {
        let args = parse_nginx_args(&words("-p/srv -cnginx.conf"));
        assert_eq!(resolve_conf_path(&args), "/srv/nginx.conf");
        let args = parse_nginx_args(&words("-qc /etc/q.conf"));
        assert_eq!(args.conf.as_deref(), Some("/etc/q.conf"));
        assert!(!args.control);
        // A -g value split by spaces in the title must not be read as options,
        // and the option after it still counts.
        let args = parse_nginx_args(&words("-g daemon off; worker_processes 2; -c /etc/g.conf"));
        assert_eq!(args.conf.as_deref(), Some("/etc/g.conf"));
    }

    #[test]
    fn default_conf_when_no_c() {
        let args = parse_nginx_args(&words("-g daemon off;"));
        assert_eq!(resolve_conf_path(&args), DEFAULT_CONF_PATH);
        assert_eq!(resolve_conf_path(&parse_nginx_args(&[])), DEFAULT_CONF_PATH);
    }

    #[test]
    fn control_invocations_are_flagged() {
        assert!(parse_nginx_args(&words("-s reload")).control);
        assert!(parse_nginx_args(&words("-t -c /etc/x.conf")).control);
        assert!(parse_nginx_args(&words("-qt")).control);
        assert!(parse_nginx_args(&words("-V")).control);
        assert!(!parse_nginx_args(&words("-c /etc/x.conf -e stderr")).control);
        // "-s" consumes its value: "-sreload" is still a control invocation.
        assert!(parse_nginx_args(&words("-sreload")).control);
    }

    #[test]
    fn deleted_exe_and_binary_names() {
        assert_eq!(exe_path("/usr/sbin/nginx (deleted)"), "/usr/sbin/nginx");
        assert_eq!(exe_path("/usr/sbin/nginx"), "/usr/sbin/nginx");
        assert!(is_nginx_binary_name("/usr/sbin/nginx (deleted)"));
        assert!(is_nginx_binary_name("/usr/sbin/nginx-debug"));
        assert!(is_nginx_binary_name("/usr/local/openresty/nginx/sbin/nginx"));
        assert!(is_nginx_binary_name("/usr/bin/openresty"));
        assert!(!is_nginx_binary_name("/usr/bin/bash"));
        assert!(!is_nginx_binary_name("/opt/nginx/bin/sleep"));
    }
}
