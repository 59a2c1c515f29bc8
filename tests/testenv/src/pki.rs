//! A throw-away certificate authority for one test Cell, made with the
//! `openssl` command (test code may use tools; the product never signs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::run::{must, require_bin};

/// A CA whose key and certificate live in `dir`.
#[derive(Debug)]
pub struct Ca {
    dir: PathBuf,
}

/// A key pair signed by a [`Ca`]: PEM files.
#[derive(Clone, Debug)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, cn: &str) -> Ca {
        require_bin("openssl", "openssl");
        fs::create_dir_all(dir).expect("create pki dir");
        let ca = Ca {
            dir: dir.to_path_buf(),
        };
        must(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .arg("ec_paramgen_curve:prime256v1")
                .args(["-nodes", "-days", "2", "-subj"])
                .arg(format!("/CN={cn}"))
                .arg("-keyout")
                .arg(ca.key())
                .arg("-out")
                .arg(ca.cert()),
        );
        ca
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// A client or server certificate. `subject` is an openssl subject such as
    /// `/O=system:nodes/CN=system:node:n1`; `sans` are `DNS:x` / `IP:1.2.3.4`.
    pub fn issue(&self, name: &str, subject: &str, sans: &[String]) -> CertPair {
        let pair = CertPair {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        let csr = self.dir.join(format!("{name}.csr"));
        must(
            Command::new("openssl")
                .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
                .arg("ec_paramgen_curve:prime256v1")
                .args(["-nodes", "-subj", subject, "-keyout"])
                .arg(&pair.key)
                .arg("-out")
                .arg(&csr),
        );
        let ext = self.dir.join(format!("{name}.ext"));
        let mut text = String::from(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        );
        if !sans.is_empty() {
            text.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        fs::write(&ext, text).expect("write ext file");
        must(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "2", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(self.cert())
                .arg("-CAkey")
                .arg(self.key())
                .args(["-CAcreateserial", "-extfile"])
                .arg(&ext)
                .arg("-out")
                .arg(&pair.cert),
        );
        pair
    }

    /// An RSA key pair for service-account tokens (`sa.key`, `sa.pub`).
    pub fn service_account_keys(&self) -> CertPair {
        let pair = CertPair {
            cert: self.dir.join("sa.pub"),
            key: self.dir.join("sa.key"),
        };
        must(
            Command::new("openssl")
                .args(["genpkey", "-algorithm", "EC", "-pkeyopt"])
                .arg("ec_paramgen_curve:prime256v1")
                .arg("-out")
                .arg(&pair.key),
        );
        must(
            Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&pair.key)
                .arg("-out")
                .arg(&pair.cert),
        );
        pair
    }
}
