//! The agent's configuration, as the running agent and `ngxprobe check
//! config` see it: the file (or the embedded defaults), the command-line
//! flags over it, then the sections a stage loads itself (the notifier's
//! alertmanager.yml).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{self, Config, ConfigError, Overrides};
use crate::expose::{self, WebSecurity};
use crate::notify;

/// Where the configuration comes from: a file (or the embedded defaults)
/// and the command-line flags that override it.
#[derive(Clone, Debug, Default)]
pub struct RunArgs {
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
}

/// Config file (or embedded defaults) with the flags applied and every
/// stage's section loaded and validated.
pub fn effective_config(args: &RunArgs) -> Result<Config, ConfigError> {
    let mut cfg = match &args.config {
        Some(path) => load_file(path)?,
        None => Config::default(),
    };
    cfg.apply(args.overrides.clone())?;
    Ok(cfg)
}

/// Reads, parses and validates a config file, including what its sections
/// point at.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = config::read(path)?;
    let mut cfg = config::parse(path, &text)?;
    let am = notify::load_section(
        cfg.alertmanager.take(),
        cfg.alertmanager_config_file.as_deref(),
        path,
        &text,
    )
    .map_err(|e| ConfigError::Semantic {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    cfg.alertmanager = am;
    // Like alertmanager_config_file: relative to this file's directory.
    if let (Some(file), Some(dir)) = (&cfg.web.config_file, path.parent())
        && file.is_relative()
    {
        cfg.web.config_file = Some(dir.join(file));
    }
    Ok(cfg)
}

/// The web config file (`web.config_file`, `--web.config.file`) loaded and
/// checked: certificates, keys and hashes read. Called before the port is
/// opened, so a bad file stops the agent with nothing listening.
pub fn web_security(cfg: &Config) -> Result<Option<Arc<WebSecurity>>, ConfigError> {
    match &cfg.web.config_file {
        Some(path) => expose::load_web_config(path)
            .map(|s| Some(Arc::new(s)))
            .map_err(ConfigError::Invalid),
        None => Ok(None),
    }
}

/// `ngxprobe check config FILE`: promtool-style success text. On error the
/// CLI prints `  FAILED: {error}` and exits 1.
pub fn check_config(path: &Path) -> Result<String, ConfigError> {
    web_security(&load_file(path)?)?;
    Ok(format!(
        "Checking {file}\n  SUCCESS: {file} is valid ngxprobe config file syntax",
        file = path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_reports_like_promtool() {
        let dir = std::env::temp_dir().join(format!("ngxprobe-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.yml");
        std::fs::write(&good, "web:\n  listen_address: \"127.0.0.1:9113\"\n").unwrap();
        let report = check_config(&good).map_err(|e| e.to_string());
        assert!(
            matches!(&report, Ok(r) if r.contains(&format!("SUCCESS: {} is valid", good.display()))),
            "{report:?}"
        );
        let bad = dir.join("bad.yml");
        std::fs::write(&bad, "web:\n  listen_adress: x\n").unwrap();
        let err = check_config(&bad).map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(e) if e.starts_with(&format!("{}:2:3: web.listen_adress:", bad.display()))),
            "{err:?}"
        );
        // A bad notifier section is found at load, with the agent config's position.
        let am = dir.join("am.yml");
        std::fs::write(
            &am,
            "alertmanager:\n  route:\n    receiver: nope\n  receivers:\n    - name: r\n",
        )
        .unwrap();
        let err = check_config(&am).map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(e) if e.contains("am.yml:3:15: alertmanager.route.receiver: undefined receiver")),
            "{err:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn web_config_file_is_relative_to_the_config_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("ngxprobe.yml");
        std::fs::write(&cfg, "web:\n  config_file: web.yml\n  enable_api: false\n").expect("write");
        std::fs::write(dir.path().join("web.yml"), "basic_auth_users:\n  u: not-a-hash\n").expect("write");
        let loaded = load_file(&cfg).map_err(|e| e.to_string());
        assert!(
            matches!(&loaded, Ok(c) if c.web.config_file == Some(dir.path().join("web.yml")) && !c.web.enable_api),
            "{loaded:?}"
        );
        let err = check_config(&cfg).map_err(|e| e.to_string());
        let want = format!(
            "{}:2:6: basic_auth_users.u: not a bcrypt hash",
            dir.path().join("web.yml").display()
        );
        assert!(matches!(&err, Err(e) if e.starts_with(&want)), "{err:?}");
        assert!(!format!("{err:?}").contains("not-a-hash"), "the value is not quoted");

        // The flag is taken as given (relative to the working directory).
        let args = RunArgs {
            config: Some(cfg),
            overrides: Overrides {
                web_config_file: Some(PathBuf::from("elsewhere.yml")),
                ..Overrides::default()
            },
        };
        let effective = effective_config(&args).map_err(|e| e.to_string());
        assert!(
            matches!(&effective, Ok(c) if c.web.config_file == Some(PathBuf::from("elsewhere.yml"))),
            "{effective:?}"
        );
        assert!(web_security(&Config::default()).is_ok_and(|s| s.is_none()));
    }
}
