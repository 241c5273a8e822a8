use super::token::{Item, tokenize};
use super::*;
use std::fs;
use std::os::unix::fs::symlink;

fn words(text: &str) -> Vec<Vec<String>> {
    tokenize(text.as_bytes())
        .unwrap()
        .into_iter()
        .map(|i| match i {
            Item::Directive { words, block, .. } => {
                let mut w = words;
                if block {
                    w.push("{".into());
                }
                w
            }
            Item::BlockEnd { .. } => vec!["}".into()],
        })
        .collect()
}

fn v(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

#[test]
fn tokens_follow_nginx_quoting_escapes_comments_and_variables() {
    assert_eq!(
        words("listen 80 ssl;# c ; {\nserver{ }"),
        vec![v(&["listen", "80", "ssl"]), v(&["server", "{"]), v(&["}"])]
    );
    // Quotes, escapes inside and outside them, and a # inside a word.
    assert_eq!(
        words(r#"a "b c" 'd\'e' f\"g h#i "\t\x";"#),
        vec![v(&["a", "b c", "d'e", "f\"g", "h#i", "\t\\x"])]
    );
    // ${var}: its braces do not open a block; `}` inside a word is a char.
    assert_eq!(
        words("return 200 ${host}x;\nif ($a = \"b\") { }"),
        vec![
            v(&["return", "200", "${host}x"]),
            v(&["if", "($a", "=", "b", ")", "{"]),
            v(&["}"])
        ]
    );
    // A quoted string ends a word right before ; or {.
    assert_eq!(words("a \"b\";"), vec![v(&["a", "b"])]);
}

#[test]
fn token_errors_name_the_line() {
    for (text, line, what) in [
        ("a;\n;", 2, "unexpected \";\""),
        ("a;\n\n{", 3, "unexpected \"{\""),
        ("a b }", 1, "unexpected \"}\""),
        ("a \"b\"c;", 1, "unexpected \"c\""),
        ("a;\nb \"c\n\n", 4, "quoted string"),
        ("a;\nb", 2, "unexpected end of file"),
    ] {
        let e = tokenize(text.as_bytes()).unwrap_err();
        assert_eq!(e.line, line, "{text:?}: {e}");
        assert!(e.what.contains(what), "{text:?}: {e}");
    }
}

/// A root directory standing in for /proc/<pid>/root.
struct Tree(tempfile::TempDir);

impl Tree {
    fn new(files: &[(&str, &str)]) -> Tree {
        let t = Tree(tempfile::tempdir().unwrap());
        for (p, text) in files {
            t.write(p, text);
        }
        t
    }
    fn write(&self, p: &str, text: &str) {
        let path = self.0.path().join(p.trim_start_matches('/'));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    fn verdict(&self, conf: &str) -> ConfVerdict {
        self.conf(conf).verdict
    }
    fn conf(&self, conf: &str) -> InstanceConf {
        read_conf(&Root::open(self.0.path()).unwrap(), conf)
    }
}

const MAIN: &str = "/etc/nginx/nginx.conf";

fn unknown(v: ConfVerdict) -> Unknown {
    match v {
        ConfVerdict::Unknown(u) => u,
        other => panic!("expected unknown, got {other:?}"),
    }
}

#[test]
fn listeners_decide_what_the_instance_needs() {
    let plain = "events {}\nhttp { server { listen 80; listen [::]:8080 default_server reuseport; } }\n\
                 stream { server { listen 443 ssl; } }\nmail { server { listen 993 ssl; } }";
    assert_eq!(Tree::new(&[(MAIN, plain)]).verdict(MAIN), ConfVerdict::PlaintextOnly);
    for (conf, at) in [
        ("http { server { listen 443 ssl; } }", "nginx.conf\":1"),
        ("http {\n server {\n  listen 8443 http2; } }", "nginx.conf\":3"),
        ("http { server { listen 443 quic reuseport; } }", "nginx.conf\":1"),
        ("http { server { listen 80; http2 on; } }", "nginx.conf\":1"),
        ("http { ssl on; server { listen 80; } }", "nginx.conf\":1"),
        (
            "http { server { listen 80; } }\nhttp { server { listen 81 \"ssl\"; } }",
            "nginx.conf\":2",
        ),
    ] {
        match Tree::new(&[(MAIN, conf)]).verdict(MAIN) {
            ConfVerdict::NeedsUprobe { why } => assert!(why.contains(at), "{conf}: {why}"),
            other => panic!("{conf}: {other:?}"),
        }
    }
    // Off, or a word that only looks like it.
    for conf in [
        "http { server { listen 80; http2 off; ssl off; } }",
        "http { server { listen 80; server_name ssl http2; } }",
        "http { server { listen ssl.example:80; } }",
    ] {
        assert_eq!(
            Tree::new(&[(MAIN, conf)]).verdict(MAIN),
            ConfVerdict::PlaintextOnly,
            "{conf}"
        );
    }
}

#[test]
fn includes_are_read_relative_to_the_config_directory_with_globs() {
    let t = Tree::new(&[
        (
            MAIN,
            "http { include conf.d/*.conf; include /srv/extra/*/site; include mime.types; }",
        ),
        ("/etc/nginx/mime.types", "types { text/html html; }"),
        ("/etc/nginx/conf.d/a.conf", "server { listen 80; }"),
        // Hidden files are not matched by `*` (glob(3)).
        ("/etc/nginx/conf.d/.b.conf", "server { listen 443 ssl; }"),
        ("/etc/nginx/conf.d/b.conf.off", "server { listen 443 ssl; }"),
        ("/srv/extra/one/site", "server { listen 81; }"),
    ]);
    assert_eq!(t.verdict(MAIN), ConfVerdict::PlaintextOnly);
    // A wildcard directory.
    t.write("/srv/extra/two/site", "server {\nlisten 443 ssl; }");
    match t.verdict(MAIN) {
        ConfVerdict::NeedsUprobe { why } => assert!(why.contains("/srv/extra/two/site\":2"), "{why}"),
        other => panic!("{other:?}"),
    }
    // An absolute symlink (Debian's sites-enabled) resolved inside the root,
    // not on the host.
    let t = Tree::new(&[
        (MAIN, "http { include sites-enabled/*; }"),
        ("/etc/nginx/sites-available/default", "server { listen 443 ssl; }"),
    ]);
    fs::create_dir_all(t.0.path().join("etc/nginx/sites-enabled")).unwrap();
    symlink(
        "/etc/nginx/sites-available/default",
        t.0.path().join("etc/nginx/sites-enabled/default"),
    )
    .unwrap();
    assert!(matches!(t.verdict(MAIN), ConfVerdict::NeedsUprobe { .. }));
    // A glob matching nothing is not an error (nginx's include neither).
    let t = Tree::new(&[(MAIN, "http { include none/*.conf; server { listen 80; } }")]);
    assert_eq!(t.verdict(MAIN), ConfVerdict::PlaintextOnly);
}

#[test]
fn anything_not_read_for_certain_is_unknown_naming_file_and_line() {
    // A missing include (no wildcard: nginx refuses to start without it).
    let u = unknown(Tree::new(&[(MAIN, "http {\n include missing.conf; }")]).verdict(MAIN));
    assert_eq!(u.reason, "unreadable");
    assert!(
        u.detail.contains("/etc/nginx/missing.conf") && u.detail.contains("nginx.conf\":2"),
        "{}",
        u.detail
    );
    // Syntax errors in an included file name that file and line.
    let u = unknown(
        Tree::new(&[
            (MAIN, "http { include x.conf; }"),
            ("/etc/nginx/x.conf", "server {\n listen 80 }\n"),
        ])
        .verdict(MAIN),
    );
    assert_eq!(u.reason, "syntax");
    assert!(u.detail.contains("x.conf\":2"), "{}", u.detail);
    // A block must close in its own file.
    let u = unknown(Tree::new(&[(MAIN, "http { include x.conf; }"), ("/etc/nginx/x.conf", "}")]).verdict(MAIN));
    assert_eq!(u.reason, "syntax");
    let u = unknown(Tree::new(&[(MAIN, "http {")]).verdict(MAIN));
    assert_eq!(u.reason, "syntax");
    // Limits: include depth (a file including itself), file count, size.
    let u = unknown(Tree::new(&[(MAIN, "include nginx.conf;")]).verdict(MAIN));
    assert_eq!(u.reason, "too_large");
    assert!(u.detail.contains("deeper"), "{}", u.detail);
    let t = Tree::new(&[(MAIN, "include d/*;")]);
    for i in 0..MAX_FILES {
        t.write(&format!("/etc/nginx/d/{i:04}"), "# x\n");
    }
    let u = unknown(t.verdict(MAIN));
    assert_eq!(u.reason, "too_large");
    let t = Tree::new(&[(MAIN, "include a; include b;")]);
    let big = "#".repeat((MAX_TOTAL_BYTES / 2) as usize + 1);
    t.write("/etc/nginx/a", &big);
    t.write("/etc/nginx/b", &big);
    let u = unknown(t.verdict(MAIN));
    assert_eq!(u.reason, "too_large");
    assert!(u.detail.contains("/etc/nginx/b"), "{}", u.detail);
    // The main file missing; a relative config path.
    assert_eq!(unknown(Tree::new(&[]).verdict(MAIN)).reason, "unreadable");
    assert_eq!(
        unknown(read_instance_conf(Path::new("/proc"), std::process::id(), "conf/nginx.conf").verdict).reason,
        "path_unknown"
    );
}

#[test]
fn reads_through_the_instance_root_in_proc() {
    // This process's own root: the same files as the host.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("n.conf");
    fs::write(&conf, "http { server { listen 127.0.0.1:80; } }").unwrap();
    assert_eq!(
        read_instance_conf(Path::new("/proc"), std::process::id(), conf.to_str().unwrap()).verdict,
        ConfVerdict::PlaintextOnly
    );
}

fn ports(p: &[u16]) -> std::collections::BTreeSet<u16> {
    p.iter().copied().collect()
}

fn h2c(conf: &str, version: &str) -> H2cPorts {
    h2c_ports(&Tree::new(&[(MAIN, conf)]).conf(MAIN), version)
}

#[test]
fn listen_addresses_parse_as_nginx_writes_them() {
    use listens::parse_listen;
    let l = |s: &str| parse_listen(&s.split(' ').map(String::from).collect::<Vec<_>>());
    let at = |s: &str| l(s).unwrap().map(|l| (l.addr, l.port, l.ssl, l.http2));
    assert_eq!(at("listen 8080"), Some(("*".into(), 8080, false, false)));
    assert_eq!(
        at("listen 127.0.0.1:81 http2"),
        Some(("127.0.0.1".into(), 81, false, true))
    );
    assert_eq!(at("listen 127.0.0.1"), Some(("127.0.0.1".into(), 80, false, false)));
    assert_eq!(
        at("listen *:82 default_server reuseport ssl"),
        Some(("*".into(), 82, true, false))
    );
    assert_eq!(at("listen 0.0.0.0:83"), Some(("*".into(), 83, false, false)));
    assert_eq!(
        at("listen [::1]:84 http2 ipv6only=on"),
        Some(("::1".into(), 84, false, true))
    );
    assert_eq!(at("listen [::]"), Some(("::".into(), 80, false, false)));
    assert_eq!(at("listen localhost:85"), Some(("localhost".into(), 85, false, false)));
    // Not TCP ports.
    assert_eq!(at("listen unix:/run/nginx.sock http2"), None);
    assert_eq!(at("listen 443 quic reuseport"), None);
    for bad in [
        "listen",
        "listen 0",
        "listen 70000",
        "listen 1.2.3.4:",
        "listen :80",
        "listen [::1",
        "listen [::1]x",
        "listen [nope]:80",
        "listen a:8x",
    ] {
        assert!(l(bad).is_err(), "{bad}");
    }
}

#[test]
fn h2c_only_ports_follow_the_nginx_version() {
    let conf = "http { server { listen 127.0.0.1:8081 http2; } server { listen 8080; } }";
    for (version, want) in [
        ("nginx/1.22.1", vec![8081]),
        ("nginx/1.9.5", vec![8081]),
        ("nginx/1.25.0", vec![8081]),
        ("openresty/1.21.4.3", vec![8081]),
        // Preface detection with HTTP/1.x fallback since 1.25.1.
        ("nginx/1.25.1", vec![]),
        ("nginx/1.27.3", vec![]),
        ("openresty/1.25.3.2", vec![]),
    ] {
        let got = h2c(conf, version);
        assert_eq!(got.ports, ports(&want), "{version}");
        assert_eq!(got.unknown, None, "{version}");
    }
    // An unknown version or fork: nothing flagged, and said why.
    for version in ["unknown", "tengine/2.3.3", "nginx/1.x"] {
        let got = h2c(conf, version);
        assert!(got.ports.is_empty(), "{version}");
        assert_eq!(got.unknown.as_ref().map(|u| u.0), Some("version"), "{version}: {got:?}");
    }
    // No plaintext http2: nothing to decide, whatever the version.
    assert_eq!(h2c("http { server { listen 80; } }", "unknown"), H2cPorts::default());
}

#[test]
fn h2c_only_ports_merge_addresses_as_nginx_does() {
    let v = "nginx/1.22.1";
    for (conf, want, mixed) in [
        // TLS with ALPN, not h2c.
        ("http { server { listen 443 ssl http2; } }", vec![], false),
        // One address in two servers: ssl from one, http2 from the other.
        (
            "http { server { listen 127.0.0.1:81 http2; } server { listen 127.0.0.1:81 ssl; } }",
            vec![],
            false,
        ),
        // http2 from one server, plain from another on the same address: h2c.
        (
            "http { server { listen 81 http2 default_server; } server { listen *:81; server_name b; } }",
            vec![81],
            false,
        ),
        // `ssl on` in the server or in http {}.
        ("http { server { listen 81 http2; ssl on; } }", vec![], false),
        ("http { ssl on; server { listen 81 http2; } }", vec![], false),
        // Two addresses of one port, one of them plain: not h2c-only.
        (
            "http { server { listen 127.0.0.1:81 http2; } server { listen 127.0.0.2:81; } }",
            vec![],
            true,
        ),
        (
            "http { server { listen [::1]:81 http2; listen 127.0.0.1:81 http2; } server { listen 82; } }",
            vec![81],
            false,
        ),
        // A server without listen is on *:80 (or *:8000).
        (
            "http { server { listen 127.0.0.1:80 http2; } server { } }",
            vec![],
            true,
        ),
        // stream {} and unix sockets are not HTTP TCP ports.
        (
            "http { server { listen 81 http2; listen unix:/s http2; } } stream { server { listen 82; } }",
            vec![81],
            false,
        ),
    ] {
        let got = h2c(conf, v);
        assert_eq!(got.ports, ports(&want), "{conf}");
        assert_eq!(got.unknown.is_some(), mixed, "{conf}: {got:?}");
    }
    // A listen not understood, or a config not read: nothing flagged.
    let got = h2c("http { server { listen 81 http2; } server {\n listen 1.2.3.4:x; } }", v);
    assert!(got.ports.is_empty());
    let (reason, why) = got.unknown.unwrap();
    assert_eq!(reason, "config");
    assert!(why.contains("nginx.conf\":2"), "{why}");
    let got = h2c("http { server { listen 81 http2; }", v);
    assert_eq!(got.unknown.map(|u| u.0), Some("config"));
}
