//! The `per_request:` section of the config file (collect stage).
use serde::{Deserialize, Deserializer, Serialize, de::Error as _};

/// Per-request RED metrics from the uprobe on nginx's ngx_http_free_request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerRequestConfig {
    /// Attach the uprobe to known nginx builds and export the
    /// http_server_* histograms.
    pub enabled: bool,
    /// Add label `server_name`: the first `server_name` of the server block
    /// that answered (each distinct name is more series).
    pub server_name_label: bool,
    /// Distinct (method, status, protocol version, scheme, port) label sets
    /// per instance; requests beyond fold into status and method `_OTHER`.
    pub max_series_per_instance: u32,
    /// Upper bounds (seconds) of http_server_request_duration_seconds.
    #[serde(deserialize_with = "buckets")]
    pub duration_buckets: Vec<f64>,
    /// Upper bounds (bytes) of the request and response body size histograms.
    #[serde(deserialize_with = "buckets")]
    pub size_buckets: Vec<f64>,
    /// Which nginx executables get the request uprobe (see [`UprobeMode`]).
    pub uprobe: UprobeMode,
}

/// Where the request uprobe is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UprobeMode {
    /// To the executables of instances that need it: their nginx config
    /// has TLS, HTTP/2 or HTTP/3 listeners, or cannot be read for certain
    /// (discover::nginx_conf). Plaintext-only instances are measured from
    /// the socket probes, which cost less per request, unless their
    /// executable carries the uprobe for another instance.
    #[default]
    Auto,
    /// To every known nginx build (every request traps once).
    Always,
    /// Nowhere: per-request records of plaintext HTTP/1.x come from the
    /// socket probes; TLS and HTTP/2 requests are not counted (their
    /// connections are reported as unparsed).
    Never,
}

impl Default for PerRequestConfig {
    fn default() -> Self {
        PerRequestConfig {
            enabled: true,
            server_name_label: false,
            max_series_per_instance: 2000,
            duration_buckets: vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
            size_buckets: vec![
                0.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
                67108864.0,
            ],
            uprobe: UprobeMode::Auto,
        }
    }
}

/// Most bucket bounds per histogram (each is a series per label set).
const MAX_BUCKETS: usize = 40;

fn buckets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    let v = Vec::<f64>::deserialize(d)?;
    if v.is_empty() || v.len() > MAX_BUCKETS {
        return Err(D::Error::custom(format!(
            "needs 1 to {MAX_BUCKETS} bucket bounds, got {}",
            v.len()
        )));
    }
    if v.iter().any(|b| !b.is_finite() || *b < 0.0) {
        return Err(D::Error::custom(
            "bucket bounds must be finite and not negative (+Inf is implicit)",
        ));
    }
    if v.windows(2).any(|w| w[0] >= w[1]) {
        return Err(D::Error::custom("bucket bounds must be strictly increasing"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use crate::config;
    use std::path::Path;

    #[test]
    fn bad_buckets_are_refused_naming_file_line_and_field() {
        let ok = config::parse(
            Path::new("c.yml"),
            "per_request:\n  duration_buckets: [0.001, 0.1]\n  max_series_per_instance: 5\n",
        )
        .unwrap();
        assert_eq!(ok.per_request.duration_buckets, vec![0.001, 0.1]);
        assert_eq!(ok.per_request.max_series_per_instance, 5);
        for bad in ["[0.1, 0.01]", "[]", "[-1]", "[0.1, 0.1]"] {
            let err = config::parse(
                Path::new("c.yml"),
                &format!("per_request:\n  duration_buckets: {bad}\n"),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("c.yml") && err.contains("duration_buckets"),
                "{bad}: {err}"
            );
        }
    }
}
