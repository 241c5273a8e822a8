//! Loading tests: defaults, and one test per error kind. Each error test
//! asserts the exact FILE:LINE:COL: FIELD prefix, so a regression in
//! position or path reporting fails.
use super::*;
use crate::compat::PromDuration;
use crate::expose::ListenAddress;
use crate::logging::{LogFormat, LogLevel};
use crate::secret::Secret;
use std::time::Duration;

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(Path::new("config.yml"), text)
}

fn error_of(text: &str) -> String {
    match parse_str(text) {
        Ok(cfg) => panic!("expected an error, got {cfg:?}"),
        Err(err) => err.to_string(),
    }
}

fn assert_error_starts(text: &str, prefix: &str) {
    let err = error_of(text);
    assert!(err.starts_with(prefix), "error {err:?} should start with {prefix:?}");
}

#[test]
fn defaults_are_the_documented_ones() {
    let cfg = Config::default();
    assert_eq!(cfg.web.listen_address, ListenAddress::AllInterfaces { port: 9113 });
    assert_eq!(cfg.web.telemetry_path, "/metrics");
    assert_eq!(cfg.log.level, LogLevel::Info);
    assert_eq!(cfg.log.format, LogFormat::Text);
    assert_eq!(cfg.discovery.interval.as_duration(), Duration::from_secs(1));
    assert_eq!(cfg.discovery.proc_path, PathBuf::from("/proc"));
    assert_eq!(
        cfg.discovery.stopped_instance_retention.as_duration(),
        Duration::from_secs(300)
    );
    assert_eq!(cfg.ebpf.max_seeded_connections.get(), 65_536);
    assert!(cfg.labels.is_empty());
}

#[test]
fn embedded_defaults_match() {
    let parsed = parse_str(DEFAULT_CONFIG_YAML).map_err(|e| e.to_string());
    assert_eq!(parsed, Ok(Config::default()));
}

#[test]
fn missing_sections_and_fields_take_defaults() {
    let cfg = parse_str("web:\n  telemetry_path: /stats\n").map_err(|e| e.to_string());
    let mut expected = Config::default();
    expected.web.telemetry_path = "/stats".to_string();
    assert_eq!(cfg, Ok(expected));
    // An empty section (YAML null) is the section's defaults.
    assert_eq!(
        parse_str("web:\nlog:\n").map_err(|e| e.to_string()),
        Ok(Config::default())
    );
}

#[test]
fn full_config_parses() {
    let text = r#"
web:
  listen_address: "[::1]:9200"
  telemetry_path: /nginx/metrics
log: { level: debug, format: json }
discovery:
  interval: 500ms
  proc_path: /host/proc
  stopped_instance_retention: 1h30m
ebpf:
  max_seeded_connections: 1024
labels:
  cluster: prod
  dc: eu-1
"#;
    let cfg = match parse_str(text) {
        Ok(cfg) => cfg,
        Err(err) => panic!("{err}"),
    };
    assert_eq!(cfg.web.listen_address.to_string(), "[::1]:9200");
    assert_eq!(cfg.web.telemetry_path, "/nginx/metrics");
    assert_eq!((cfg.log.level, cfg.log.format), (LogLevel::Debug, LogFormat::Json));
    assert_eq!(cfg.discovery.interval.as_duration(), Duration::from_millis(500));
    assert_eq!(cfg.discovery.proc_path, PathBuf::from("/host/proc"));
    assert_eq!(
        cfg.discovery.stopped_instance_retention.as_duration(),
        Duration::from_secs(5400)
    );
    assert_eq!(cfg.ebpf.max_seeded_connections.get(), 1024);
    let labels: Vec<(&str, &str)> = cfg.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(labels, [("cluster", "prod"), ("dc", "eu-1")]);
}

#[test]
fn unknown_field_names_file_line_and_path() {
    assert_error_starts(
        "discovery:\n  interval: 1s\n  intervall: 2s\n",
        "config.yml:3:3: discovery.intervall: unknown field, expected one of interval, proc_path, stopped_instance_retention",
    );
    assert_error_starts(
        "# top\nfoo: 1\n",
        "config.yml:2:1: foo: unknown field, expected one of global, web, log",
    );
}

#[test]
fn wrong_type_names_the_field() {
    assert_error_starts(
        "ebpf:\n  max_seeded_connections: lots\n",
        "config.yml:2:27: ebpf.max_seeded_connections: ",
    );
    assert_error_starts(
        "ebpf:\n  max_seeded_connections: 0\n",
        "config.yml:2:27: ebpf.max_seeded_connections: ",
    );
    assert_error_starts("web: 5\n", "config.yml:1:6: web: ");
    assert_error_starts("labels: [a, b]\n", "config.yml:1:9: labels: ");
}

#[test]
fn bad_duration_names_the_field() {
    assert_error_starts(
        "discovery:\n  interval: 5x\n",
        "config.yml:2:13: discovery.interval: invalid duration \"5x\"",
    );
    assert_error_starts(
        "discovery:\n  stopped_instance_retention: 1.5h\n",
        "config.yml:2:31: discovery.stopped_instance_retention: invalid duration",
    );
    assert_error_starts(
        "discovery:\n  interval: 0s\n",
        "config.yml:2:13: discovery.interval: must be greater than 0s",
    );
}

#[test]
fn bad_listen_address_names_the_field() {
    assert_error_starts(
        "web:\n  listen_address: \"9113\"\n",
        "config.yml:2:19: web.listen_address: invalid listen address \"9113\"",
    );
    assert_error_starts(
        "web:\n  listen_address: \"::1:9113\"\n",
        "config.yml:2:19: web.listen_address: invalid listen address",
    );
}

#[test]
fn bad_web_limits_name_the_field() {
    assert_error_starts(
        "web:\n  max_header_bytes: 100\n",
        "config.yml:2:21: web.max_header_bytes: must be between 8192 and 1048576",
    );
    assert_error_starts(
        "web:\n  header_read_timeout: 0s\n",
        "config.yml:2:24: web.header_read_timeout: must be greater than 0s",
    );
    assert_error_starts(
        "web:\n  max_connections: 1\n",
        "config.yml:2:20: web.max_connections: must be at least 2",
    );
    assert_error_starts(
        "web:\n  max_api_requests: 0\n",
        "config.yml:2:21: web.max_api_requests: must be at least 1",
    );
    let err = error_of("web:\n  max_connections: 10\n  max_api_requests: 10\n");
    assert!(
        err.contains("web.max_api_requests (10) must be below web.max_connections (10)"),
        "{err}"
    );
}

#[test]
fn the_example_config_parses() {
    let text = include_str!("../../../deploy/config.example.yml");
    let parsed = parse(Path::new("deploy/config.example.yml"), text).map(|c| c.web);
    assert_eq!(
        parsed.map_err(|e| e.to_string()),
        Ok(crate::expose::WebConfig::default())
    );
}

#[test]
fn bad_enum_label_and_path_values() {
    assert_error_starts(
        "log:\n  level: loud\n",
        "config.yml:2:10: log.level: unknown variant `loud`",
    );
    assert_error_starts(
        "log:\n  format: xml\n",
        "config.yml:2:11: log.format: unknown variant `xml`",
    );
    assert_error_starts("labels:\n  bad-name: x\n", "config.yml:2:");
    assert!(error_of("labels:\n  bad-name: x\n").contains("labels.bad-name: invalid label name"));
    assert!(error_of("labels:\n  __x: y\n").contains("reserved"));
    assert_error_starts(
        "web:\n  telemetry_path: /healthz\n",
        "config.yml:2:19: web.telemetry_path: ",
    );
    assert_error_starts(
        "web:\n  telemetry_path: metrics\n",
        "config.yml:2:19: web.telemetry_path: ",
    );
}

#[test]
fn yaml_syntax_and_duplicate_keys() {
    let err = error_of("web:\n  listen_address: [\n");
    assert!(err.starts_with("config.yml:"), "{err}");
    assert!(
        err.chars().nth("config.yml:".len()).is_some_and(|c| c.is_ascii_digit()),
        "no line: {err}"
    );
    let dup = error_of("web:\n  telemetry_path: /a\n  telemetry_path: /b\n");
    assert!(
        dup.starts_with("config.yml:3:") && dup.to_lowercase().contains("duplicate"),
        "{dup}"
    );
}

#[test]
fn empty_and_missing_files() {
    for empty in ["", "\n\n", "# only a comment\n", "---\n"] {
        let err = parse_str(empty).map(|_| ()).map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(e) if e.starts_with("config.yml: config file is empty")),
            "{empty:?}: {err:?}"
        );
    }
    let missing = load(Path::new("/nonexistent/ngxprobe.yml"))
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert_eq!(
        missing,
        Err("/nonexistent/ngxprobe.yml: config file not found".to_string())
    );
    let dir = load(Path::new("/")).map(|_| ()).map_err(|e| e.to_string());
    assert!(
        matches!(&dir, Err(e) if e.starts_with("/: cannot read config file")),
        "{dir:?}"
    );
}

#[test]
fn overrides_win_over_the_file() {
    let mut cfg = Config::default();
    let applied = cfg.apply(Overrides {
        listen_address: Some("127.0.0.1:9999".to_string()),
        log_level: Some("debug".to_string()),
        log_format: Some("json".to_string()),
        discovery_interval: Some("250ms".to_string()),
        proc_path: Some(PathBuf::from("/host/proc")),
        storage_path: Some(PathBuf::from("/tmp/ngxprobe-data")),
        web_config_file: Some(PathBuf::from("web.yml")),
        disable_api: true,
    });
    assert!(applied.is_ok(), "{applied:?}");
    assert_eq!(cfg.storage.path, PathBuf::from("/tmp/ngxprobe-data"));
    assert_eq!(cfg.web.config_file, Some(PathBuf::from("web.yml")));
    assert!(!cfg.web.enable_api);
    assert_eq!(cfg.web.listen_address.to_string(), "127.0.0.1:9999");
    assert_eq!((cfg.log.level, cfg.log.format), (LogLevel::Debug, LogFormat::Json));
    assert_eq!(cfg.discovery.interval.as_duration(), Duration::from_millis(250));
    assert_eq!(cfg.discovery.proc_path, PathBuf::from("/host/proc"));

    // No overrides: nothing changes.
    let before = cfg.clone();
    assert!(cfg.apply(Overrides::default()).is_ok());
    assert_eq!(cfg, before);
}

#[test]
fn bad_overrides_name_the_field() {
    let cases = [
        (
            Overrides {
                listen_address: Some("nope".into()),
                ..Default::default()
            },
            "web.listen_address",
        ),
        (
            Overrides {
                log_level: Some("loud".into()),
                ..Default::default()
            },
            "log.level",
        ),
        (
            Overrides {
                log_format: Some("xml".into()),
                ..Default::default()
            },
            "log.format",
        ),
        (
            Overrides {
                discovery_interval: Some("5".into()),
                ..Default::default()
            },
            "discovery.interval",
        ),
        (
            Overrides {
                discovery_interval: Some("0s".into()),
                ..Default::default()
            },
            "discovery.interval",
        ),
        (
            Overrides {
                proc_path: Some(PathBuf::new()),
                ..Default::default()
            },
            "discovery.proc_path",
        ),
    ];
    for (overrides, field) in cases {
        let err = Config::default().apply(overrides).map_err(|e| e.to_string());
        assert!(matches!(&err, Err(e) if e.starts_with(field)), "{field}: {err:?}");
    }
}

#[test]
fn redacted_yaml_round_trips() {
    let mut cfg = Config::default();
    cfg.labels.insert("cluster".parse().unwrap(), "prod".to_string());
    cfg.discovery.interval = PromDuration::from_millis(1500);
    let yaml = redacted_yaml(&cfg);
    assert!(
        yaml.contains("listen_address: \":9113\"") || yaml.contains("listen_address: ':9113'"),
        "{yaml}"
    );
    assert!(yaml.contains("interval: 1s500ms"), "{yaml}");
    assert_eq!(parse_str(&yaml).map_err(|e| e.to_string()), Ok(cfg));
}

#[test]
fn redacted_yaml_hides_secrets() {
    #[derive(serde::Serialize)]
    struct WithSecret {
        api_url: Secret,
    }
    let yaml = serde_saphyr::to_string(&WithSecret {
        api_url: Secret::new("https://hooks.example/T0"),
    })
    .unwrap_or_default();
    assert!(yaml.contains("<secret>") && !yaml.contains("hooks.example"), "{yaml}");
}

fn env(name: &str) -> Option<String> {
    match name {
        "NODE_NAME" => Some("node-7".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// The config as `parse` leaves it, with `env` as the environment.
fn resolved(text: &str) -> Result<Config, (String, String)> {
    let mut cfg: Config = crate::compat::yaml::from_str(text, None).map_err(|e| (e.field(), e.message))?;
    resolve_external_labels(&mut cfg, &env)?;
    Ok(cfg)
}

#[test]
fn global_external_labels_expand_the_environment() {
    let cfg =
        resolved("global:\n  external_labels:\n    node: ${NODE_NAME}\n    region: eu-$NODE_NAME\n    cost: $$1\n")
            .unwrap();
    assert_eq!(
        cfg.external_labels(),
        vec![
            ("cost".to_string(), "$1".to_string()),
            ("node".to_string(), "node-7".to_string()),
            ("region".to_string(), "eu-node-7".to_string()),
        ]
    );
    // Alerts get the same labels: the supervisor hands them to rules, and the
    // older rules.external_labels is read as global.external_labels.
    let cfg = resolved("rules:\n  external_labels: {cluster: prod, node: $NODE_NAME}\n").unwrap();
    assert!(cfg.rules.external_labels.is_empty());
    assert_eq!(
        cfg.external_labels(),
        vec![
            ("cluster".to_string(), "prod".to_string()),
            ("node".to_string(), "node-7".to_string())
        ]
    );
    // None configured: nothing to add anywhere.
    assert!(resolved("web: {}\n").unwrap().external_labels().is_empty());
    assert!(Config::default().external_labels().is_empty());
}

#[test]
fn bad_external_labels_name_file_line_and_field() {
    let e = resolved("global:\n  external_labels:\n    node: ${EMPTY}\n").unwrap_err();
    assert_eq!(
        e,
        (
            "global.external_labels.node".to_string(),
            "environment variable EMPTY is empty".to_string()
        )
    );
    let e = resolved("global:\n  external_labels: {node: \"\"}\n").unwrap_err();
    assert!(
        e.0 == "global.external_labels.node" && e.1.starts_with("empty value"),
        "{e:?}"
    );
    let e = resolved("global: {external_labels: {a: x}}\nrules: {external_labels: {b: y}}\n").unwrap_err();
    assert_eq!(e.0, "rules.external_labels");
    let e = resolved("rules: {external_labels: {bad-name: y}}\n").unwrap_err();
    assert!(
        e.0 == "rules.external_labels.bad-name" && e.1.contains("invalid label name"),
        "{e:?}"
    );

    // Through parse, with the real (unset) variable: file, line and field.
    assert_error_starts(
        "log: {level: info}\nglobal:\n  external_labels:\n    cluster: prod\n    node: ${NGXPROBE_TEST_UNSET_NODE}\n",
        "config.yml:5:11: global.external_labels.node: environment variable NGXPROBE_TEST_UNSET_NODE is not set",
    );
    assert_error_starts("global:\n  external_labels:\n    __node: a\n", "config.yml:3:");
    assert!(error_of("global:\n  external_labels:\n    __node: a\n").contains("reserved"));
    assert_error_starts(
        "global:\n  scrape_interval: 15s\n",
        "config.yml:2:3: global.scrape_interval: unknown field",
    );
}
