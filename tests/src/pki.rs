//! A test CA and certificates it signed, made with openssl: the server's
//! (`server.crt`/`.key`, SANs localhost and 127.0.0.1) and two clients'
//! (`scraper`, SAN scraper.example; `intruder`, SAN intruder.example).
//! For TLS on the agent's own port (`--web.config.file`).
use crate::protocol_clients::run;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Pki {
    dir: PathBuf,
}

/// Certificates [`Pki::new`] makes: (name, subjectAltName).
pub const CERTS: [(&str, &str); 3] = [
    ("server", "DNS:localhost,IP:127.0.0.1"),
    ("scraper", "DNS:scraper.example"),
    ("intruder", "DNS:intruder.example"),
];

impl Pki {
    /// Writes `ca.crt`/`ca.key` and, for each of [`CERTS`], `NAME.crt` and
    /// `NAME.key` (EC P-256, 2 days) into `dir`.
    pub fn new(dir: &Path) -> Result<Pki> {
        let openssl = |args: &[&str]| {
            let mut cmd = Command::new("openssl");
            cmd.args(args).current_dir(dir);
            run(&mut cmd, "openssl").map(|_| ())
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-days",
            "2",
            "-subj",
            "/CN=ngxprobe test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        openssl(&ca)?;
        for (name, san) in CERTS {
            let (key, req, crt, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
                format!("{name}.ext"),
            );
            let subj = format!("/CN={name}");
            let mut csr = vec!["req"];
            csr.extend(ec);
            csr.extend(["-subj", &subj, "-keyout", &key, "-out", &req]);
            openssl(&csr)?;
            std::fs::write(dir.join(&ext), format!("subjectAltName={san}\n"))?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &req,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ])?;
        }
        Ok(Pki { dir: dir.to_path_buf() })
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// curl arguments: trust the CA, present `client`'s certificate if any.
    pub fn curl(&self, client: Option<&str>, extra: &[&str]) -> Vec<String> {
        let mut args = vec!["--cacert".to_string(), self.path("ca.crt")];
        if let Some(c) = client {
            args.extend([
                "--cert".to_string(),
                self.path(&format!("{c}.crt")),
                "--key".to_string(),
                self.path(&format!("{c}.key")),
            ]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }
}
