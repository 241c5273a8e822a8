//! Picks the exposition format from the scraper's Accept header, following
//! client_golang: the highest-q acceptable OpenMetrics (version absent,
//! 0.0.1 or 1.0.0) or text/plain entry wins; anything else means text.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let mut best: Option<(f32, Format)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media_type = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = 1.0_f32;
        let mut version = None;
        for param in parts {
            let Some((key, value)) = param.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim().to_ascii_lowercase().as_str() {
                // An unparsable q makes the entry unusable rather than preferred.
                "q" => q = value.parse().unwrap_or(0.0),
                "version" => version = Some(value.to_string()),
                _ => {}
            }
        }
        let format = match media_type.as_str() {
            "application/openmetrics-text" => match version.as_deref() {
                None | Some("0.0.1") | Some("1.0.0") => Format::OpenMetrics,
                Some(_) => continue,
            },
            "text/plain" => Format::Text,
            _ => continue,
        };
        if q.is_nan() || q <= 0.0 {
            continue;
        }
        // Strictly greater: on equal q the earlier entry wins.
        if best.is_none_or(|(best_q, _)| q > best_q) {
            best = Some((q, format));
        }
    }
    best.map_or(Format::Text, |(_, format)| format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_like_client_golang() {
        let cases: &[(Option<&str>, Format)] = &[
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain"), Format::Text),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (Some("application/openmetrics-text; version=1.0.0"), Format::OpenMetrics),
            (Some("application/openmetrics-text;version=0.0.1"), Format::OpenMetrics),
            (Some("application/openmetrics-text;version=2.0.0"), Format::Text),
            (Some("application/openmetrics-text;version=1.0.0;q=0"), Format::Text),
            (
                Some("Application/OpenMetrics-Text; Version=\"1.0.0\""),
                Format::OpenMetrics,
            ),
            // Prometheus 2.x default scrape Accept header.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Format::OpenMetrics,
            ),
            // Prometheus 3.x default, with escaping parameters.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                Format::OpenMetrics,
            ),
            // Prometheus with scrape_protocols: [PrometheusText0.0.4] first.
            (
                Some("text/plain;version=0.0.4;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5"),
                Format::Text,
            ),
            (
                Some("text/plain;q=0.5, application/openmetrics-text;q=0.8"),
                Format::OpenMetrics,
            ),
            (
                Some("*/*;q=0.9, application/openmetrics-text;q=0.5"),
                Format::OpenMetrics,
            ),
            (Some("application/openmetrics-text;q=abc"), Format::Text),
            (Some("application/json"), Format::Text),
            (Some(";;,,="), Format::Text),
        ];
        for &(accept, want) in cases {
            assert_eq!(negotiate(accept), want, "Accept: {accept:?}");
        }
    }
}
