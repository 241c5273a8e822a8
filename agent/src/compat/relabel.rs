//! Prometheus relabeling (`relabel_configs`, `write_relabel_configs`), with
//! the same defaults and actions as Prometheus' model/relabel: replace, keep,
//! drop, keepequal, dropequal, hashmod, labelmap, labeldrop, labelkeep,
//! lowercase, uppercase. Regexes are anchored at both ends; replacements
//! expand `$1`, `${1}`, `$name` like Go's `Regexp.Expand`.
use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

/// A regex as written (shown as written), matched anchored: `^(?:re)$`.
#[derive(Clone, Debug)]
pub struct AnchoredRegex {
    text: String,
    re: Regex,
}

impl AnchoredRegex {
    pub fn new(text: &str) -> Result<Self, regex::Error> {
        Ok(AnchoredRegex {
            text: text.to_string(),
            re: Regex::new(&format!("^(?s:{text})$"))?,
        })
    }
}

impl Default for AnchoredRegex {
    fn default() -> Self {
        AnchoredRegex {
            text: "(.*)".into(),
            re: Regex::new("^(?s:(.*))$").unwrap_or_else(|_| unreachable!("constant regex")),
        }
    }
}

impl PartialEq for AnchoredRegex {
    fn eq(&self, o: &Self) -> bool {
        self.text == o.text
    }
}

impl Serialize for AnchoredRegex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for AnchoredRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AnchoredRegex::new(&s).map_err(|e| serde::de::Error::custom(format!("invalid regex {s:?}: {e}")))
    }
}

/// One relabel rule, Prometheus' field names and defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelabelConfig {
    pub source_labels: Vec<String>,
    pub separator: String,
    pub regex: AnchoredRegex,
    pub modulus: u64,
    pub target_label: String,
    pub replacement: String,
    pub action: Action,
}

impl Default for RelabelConfig {
    fn default() -> Self {
        RelabelConfig {
            source_labels: Vec::new(),
            separator: ";".into(),
            regex: AnchoredRegex::default(),
            modulus: 0,
            target_label: String::new(),
            replacement: "$1".into(),
            action: Action::Replace,
        }
    }
}

/// `[a-zA-Z_][a-zA-Z0-9_]*` (Prometheus' classic label names).
fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

impl RelabelConfig {
    /// Prometheus' `Config.Validate`: what each action requires.
    pub fn validate(&self) -> Result<(), String> {
        use Action::*;
        let needs_target = matches!(
            self.action,
            Replace | HashMod | Lowercase | Uppercase | KeepEqual | DropEqual
        );
        if needs_target && self.target_label.is_empty() {
            return Err(format!(
                "relabel configuration for {:?} action requires 'target_label' value",
                self.action
            )
            .to_lowercase());
        }
        if matches!(self.action, Lowercase | Uppercase | HashMod | KeepEqual | DropEqual)
            && !valid_label_name(&self.target_label)
        {
            return Err(format!(
                "{:?} is invalid 'target_label' for {:?} action",
                self.target_label, self.action
            ));
        }
        if self.action == HashMod && self.modulus == 0 {
            return Err("relabel configuration for hashmod requires non-zero modulus".into());
        }
        if matches!(self.action, LabelDrop | LabelKeep)
            && (!self.source_labels.is_empty()
                || self.target_label != RelabelConfig::default().target_label
                || self.modulus != 0
                || self.separator != ";"
                || self.replacement != "$1")
        {
            return Err(format!("{:?} action requires only 'regex', and no other fields", self.action).to_lowercase());
        }
        if matches!(self.action, KeepEqual | DropEqual)
            && (self.regex != AnchoredRegex::default() || self.modulus != 0 || self.replacement != "$1")
        {
            return Err(format!(
                "{:?} action requires only 'source_labels' and 'target_label', and no other fields",
                self.action
            )
            .to_lowercase());
        }
        Ok(())
    }
}

/// Applies `rules` in order to `labels` (name → value, `__name__` included).
/// `None`: the series is dropped. Empty values delete a label.
pub fn process(labels: &BTreeMap<String, String>, rules: &[RelabelConfig]) -> Option<BTreeMap<String, String>> {
    let mut ls = labels.clone();
    for r in rules {
        if !apply(&mut ls, r) {
            return None;
        }
    }
    ls.retain(|_, v| !v.is_empty());
    Some(ls)
}

fn apply(ls: &mut BTreeMap<String, String>, r: &RelabelConfig) -> bool {
    let val = r
        .source_labels
        .iter()
        .map(|n| ls.get(n).map(String::as_str).unwrap_or(""))
        .collect::<Vec<_>>()
        .join(&r.separator);
    match r.action {
        Action::Drop => return !r.regex.re.is_match(&val),
        Action::Keep => return r.regex.re.is_match(&val),
        Action::DropEqual => return ls.get(&r.target_label).map(String::as_str).unwrap_or("") != val,
        Action::KeepEqual => return ls.get(&r.target_label).map(String::as_str).unwrap_or("") == val,
        Action::Replace => {
            let Some(caps) = r.regex.re.captures(&val) else {
                return true;
            };
            let mut target = String::new();
            caps.expand(&r.target_label, &mut target);
            if !valid_label_name(&target) {
                return true;
            }
            let mut res = String::new();
            caps.expand(&r.replacement, &mut res);
            if res.is_empty() {
                ls.remove(&target);
            } else {
                ls.insert(target, res);
            }
        }
        Action::Lowercase => {
            ls.insert(r.target_label.clone(), val.to_lowercase());
        }
        Action::Uppercase => {
            ls.insert(r.target_label.clone(), val.to_uppercase());
        }
        Action::HashMod => {
            use md5::Digest;
            let sum = md5::Md5::digest(val.as_bytes());
            // Go: binary.BigEndian.Uint64(sum[8:]) % modulus.
            let mut tail = [0u8; 8];
            tail.copy_from_slice(&sum[8..16]);
            let m = u64::from_be_bytes(tail) % r.modulus.max(1);
            ls.insert(r.target_label.clone(), m.to_string());
        }
        Action::LabelMap => {
            let adds: Vec<(String, String)> = ls
                .iter()
                .filter_map(|(k, v)| {
                    let caps = r.regex.re.captures(k)?;
                    let mut name = String::new();
                    caps.expand(&r.replacement, &mut name);
                    Some((name, v.clone()))
                })
                .collect();
            ls.extend(adds);
        }
        Action::LabelDrop => ls.retain(|k, _| !r.regex.re.is_match(k)),
        Action::LabelKeep => ls.retain(|k, _| r.regex.re.is_match(k)),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn rule(yaml: &str) -> RelabelConfig {
        let r: RelabelConfig = serde_saphyr::from_str(yaml).unwrap();
        r.validate().unwrap();
        r
    }

    #[test]
    fn actions_behave_like_prometheus() {
        let base = ls(&[
            ("__name__", "nginx_http_requests_total"),
            ("instance", "a:80"),
            ("job", "nginx"),
        ]);
        let keep = rule("source_labels: [__name__]\nregex: nginx_.*\naction: keep\n");
        assert!(process(&base, std::slice::from_ref(&keep)).is_some());
        let drop = rule("source_labels: [__name__]\nregex: nginx_http.*\naction: drop\n");
        assert!(process(&base, &[drop]).is_none());
        // Anchored: a partial match does not count.
        let partial = rule("source_labels: [__name__]\nregex: nginx\naction: keep\n");
        assert!(process(&base, &[partial]).is_none());
        let rep = rule("source_labels: [instance]\nregex: '([^:]+):.*'\ntarget_label: host\nreplacement: 'h-$1'\n");
        assert_eq!(
            process(&base, &[rep]).unwrap().get("host").map(String::as_str),
            Some("h-a")
        );
        let del = rule("source_labels: [nope]\nregex: ''\ntarget_label: job\nreplacement: ''\n");
        assert!(!process(&base, &[del]).unwrap().contains_key("job"));
        let ld = rule("regex: inst.*\naction: labeldrop\n");
        assert!(!process(&base, &[ld]).unwrap().contains_key("instance"));
        let lk = rule("regex: __name__|job\naction: labelkeep\n");
        assert_eq!(process(&base, &[lk]).unwrap().len(), 2);
        let lm = rule("regex: (j.*)\nreplacement: x_$1\naction: labelmap\n");
        assert_eq!(
            process(&base, &[lm]).unwrap().get("x_job").map(String::as_str),
            Some("nginx")
        );
        let up = rule("source_labels: [job]\ntarget_label: J\naction: uppercase\n");
        assert_eq!(
            process(&base, &[up]).unwrap().get("J").map(String::as_str),
            Some("NGINX")
        );
        let ke = rule("source_labels: [job]\ntarget_label: job\naction: keepequal\n");
        assert!(process(&base, std::slice::from_ref(&ke)).is_some());
        let de = rule("source_labels: [instance]\ntarget_label: job\naction: dropequal\n");
        assert!(process(&base, &[de]).is_some());
        // Prometheus' relabel_test.go vector: c="baz", modulus 1000 -> "976".
        let hm = rule("source_labels: [c]\nmodulus: 1000\ntarget_label: d\naction: hashmod\n");
        let got = process(&ls(&[("a", "foo"), ("b", "bar"), ("c", "baz")]), &[hm]).unwrap();
        assert_eq!(got["d"], "976");
    }

    #[test]
    fn invalid_rules_are_refused() {
        let r: RelabelConfig = serde_saphyr::from_str("action: hashmod\ntarget_label: x\n").unwrap();
        assert!(r.validate().unwrap_err().contains("modulus"));
        let r: RelabelConfig = serde_saphyr::from_str("action: replace\n").unwrap();
        assert!(r.validate().unwrap_err().contains("target_label"));
        let r: RelabelConfig = serde_saphyr::from_str("action: labeldrop\nregex: a\nsource_labels: [b]\n").unwrap();
        assert!(r.validate().is_err());
        assert!(serde_saphyr::from_str::<RelabelConfig>("action: frobnicate\n").is_err());
        assert!(serde_saphyr::from_str::<RelabelConfig>("regex: '('\n").is_err());
    }
}
