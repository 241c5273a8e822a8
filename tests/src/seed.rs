//! The seed configuration the alerting tests and `cargo xtask bench
//! alert-latency` use: the `slack-notifications` receiver and the
//! `WebServerConnectivity` rule of `shared/seeds/000_bf0a491ec61e482c.txt`,
//! verbatim, and a rate variant of the rule that resolves when load stops.

/// The seed's receiver, byte for byte (trailing spaces included).
pub const SEED_RECEIVERS: &str = "receivers:  
- name: 'slack-notifications'  
  slack_configs:  
    - send_resolved: true  
      text: \"{{ .CommonAnnotations.summary }}\"  
      title: \"{{ .CommonLabels.severity }}: {{ .CommonLabels.alertname }}\"  
      channel: '#your-slack-channel'  
      api_url: 'https://hooks.slack.com/services/your/slack/webhook/url'
";
/// The `api_url` in [`SEED_RECEIVERS`], replaced by [`receivers`].
pub const SEED_API_URL: &str = "https://hooks.slack.com/services/your/slack/webhook/url";

/// The seed's rule, verbatim (group "example" of alerting_rules.yml).
pub const SEED_RULE: &str = r#"groups:
- name: example
  rules:
  - alert: WebServerConnectivity
    expr: nginx_http_requests_total{instance="192.168.49.10:9113",job="nginx"} > 100
    for: 1m
    labels:
      severity: critical
    annotations:
      description: The rate of HTTP requests is higher than 100 per minute.
      summary: High request rate on nginx
"#;

/// The seed rule's condition, replaced by [`rate_rule`].
pub const SEED_EXPR: &str = r#"expr: nginx_http_requests_total{instance="192.168.49.10:9113",job="nginx"} > 100
    for: 1m"#;

/// The same alert on the request rate, so that it resolves when load stops:
/// [`SEED_RULE`] with `expr: rate(nginx_http_requests_total[5s]) > 100` and
/// `for: 2s`, nothing else changed.
pub fn rate_rule() -> String {
    SEED_RULE.replace(
        SEED_EXPR,
        "expr: rate(nginx_http_requests_total[5s]) > 100\n    for: 2s",
    )
}

/// What the seed's receiver makes of the rules' alert: title, text (summary), channel.
pub const TITLE: &str = "critical: WebServerConnectivity";
pub const SUMMARY: &str = "High request rate on nginx";
pub const CHANNEL: &str = "#your-slack-channel";

/// [`SEED_RECEIVERS`] with `api_url` pointing at `api_url` (a local webhook
/// server), nothing else changed.
pub fn receivers(api_url: &str) -> String {
    SEED_RECEIVERS.replace(SEED_API_URL, api_url)
}

/// Every line of `text` prefixed with `prefix` (to nest a YAML block).
pub fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receivers_only_change_api_url() {
        let r = receivers("http://127.0.0.1:1/x");
        assert!(r.contains("api_url: 'http://127.0.0.1:1/x'"));
        assert_eq!(r.replace("http://127.0.0.1:1/x", SEED_API_URL), SEED_RECEIVERS);
        assert_eq!(indent("a:\n  b\n", "  "), "  a:\n    b\n");
    }

    #[test]
    fn rate_rule_only_changes_expr_and_for() {
        let r = rate_rule();
        assert_ne!(r, SEED_RULE);
        assert!(r.contains("    expr: rate(nginx_http_requests_total[5s]) > 100\n    for: 2s\n    labels:"));
        assert_eq!(r.lines().count(), SEED_RULE.lines().count());
    }
}
