//! A test CA and certificates it signed, made with openssl: the server's
//! (`server.crt`/`.key`, SANs localhost and 127.0.0.1) and two clients'
//! (`scraper`, SAN scraper.example; `intruder`, SAN intruder.example).
//! For TLS on the agent's own port (`--web.config.file`).
use crate::protocol_clients::run;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A new EC P-256 key, unencrypted.
const EC: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

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
        let pki = Pki { dir: dir.to_path_buf() };
        let mut ca = vec!["req", "-x509"];
        ca.extend(EC);
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
        pki.openssl(&ca)?;
        for (name, san) in CERTS {
            pki.issue(name, san)?;
        }
        Ok(pki)
    }

    /// `NAME.crt`/`NAME.key`: a new key and a certificate for it (CN=NAME,
    /// subjectAltName `san`, e.g. "DNS:localhost") signed by the CA.
    pub fn issue(&self, name: &str, san: &str) -> Result<()> {
        let (key, req, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN={name}");
        let mut csr = vec!["req"];
        csr.extend(EC);
        csr.extend(["-subj", &subj, "-keyout", &key, "-out", &req]);
        self.openssl(&csr)?;
        std::fs::write(self.dir.join(&ext), format!("subjectAltName={san}\n"))?;
        self.openssl(&[
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
        ])
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new("openssl");
        cmd.args(args).current_dir(&self.dir);
        run(&mut cmd, "openssl").map(|_| ())
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
