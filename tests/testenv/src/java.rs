//! What building a real Maven project needs on a build host that can pull
//! nothing: the JDK + Maven compile image and the JRE base image
//! (`hack/java-images.sh` makes their root filesystems once per machine from
//! the machine's own JDK and Maven), and the site's Maven mirror, here an
//! nginx proxying Maven Central that counts what it served.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::docker::Dockerd;
use crate::nginx::Nginx;
use crate::run::{must, new_dir};

/// The compile image: OpenJDK 17 and Maven, Maven's settings naming the mirror.
pub const COMPILE_IMAGE: &str = "leengine.local/jdk17-maven:3";
/// The app base image the example's Dockerfile starts `FROM`.
pub const JRE_IMAGE: &str = "leengine.local/jre:17";

/// The root filesystem tarballs of `hack/java-images.sh`, built if missing.
fn tarballs() -> (PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack/java-images.sh");
    let out = must(Command::new("bash").arg(&script));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(PathBuf::from)
            .expect("hack/java-images.sh prints the tarballs")
    };
    (get("LEENGINE_JDK_MAVEN_TAR="), get("LEENGINE_JRE_TAR="))
}

/// Imports [`COMPILE_IMAGE`] (with `settings.xml` sending every Maven
/// repository to `mirror_url`) and [`JRE_IMAGE`] into `dockerd`, as an
/// operator loads a build host's images.
pub fn load_java_images(dockerd: &Dockerd, mirror_url: &str) {
    let (jdk, jre) = tarballs();
    let import = |tar: &Path, tag: &str, env: &[&str]| {
        let mut c = dockerd.cli(&["import"]);
        for e in env {
            c.arg("--change").arg(format!("ENV {e}"));
        }
        c.arg(tar).arg(tag);
        must(&mut c);
    };
    let base = "leengine.local/jdk17-maven:base";
    import(
        &jdk,
        base,
        &[
            "JAVA_HOME=/opt/jdk",
            "PATH=/opt/jdk/bin:/opt/maven/bin:/bin",
        ],
    );
    import(&jre, JRE_IMAGE, &["PATH=/opt/jre/bin:/bin"]);
    let ctx = new_dir("mvnctx");
    fs::write(ctx.join("settings.xml"), maven_settings(mirror_url)).expect("write settings.xml");
    fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {base}\nCOPY settings.xml /opt/maven/conf/settings.xml\n"),
    )
    .expect("write Dockerfile");
    let ctx_s = ctx.to_string_lossy().into_owned();
    must(&mut dockerd.cli(&["build", "-q", "-t", COMPILE_IMAGE, &ctx_s]));
    let _ = fs::remove_dir_all(&ctx);
}

/// A site's Maven settings: every repository through the one mirror.
fn maven_settings(mirror_url: &str) -> String {
    format!(
        "<settings>\n  <mirrors>\n    <mirror>\n      <id>site</id>\n      <mirrorOf>*</mirrorOf>\n      <url>{mirror_url}</url>\n    </mirror>\n  </mirrors>\n</settings>\n"
    )
}

/// The site's Maven mirror: nginx proxying Maven Central, listening on
/// loopback and on `bind` (the compile network's gateway, the only address
/// compile containers reach).
#[derive(Debug)]
pub struct MavenMirror {
    nginx: Nginx,
    bind: String,
}

impl MavenMirror {
    pub fn start(bind: &str) -> MavenMirror {
        let nginx = Nginx::start(|ctx| {
            let p = ctx.prefix.display();
            format!(
                "{}events {{}}\nhttp {{\n{}\
                 log_format mirror '$status $request_method $uri';\n\
                 server {{\n  listen 127.0.0.1:{port};\n  listen {bind}:{port};\n\
                 access_log {p}/logs/mirror.log mirror;\n\
                 location / {{\n    proxy_pass https://repo.maven.apache.org/maven2/;\n\
                 proxy_http_version 1.1;\n    proxy_set_header Connection \"\";\n\
                 proxy_set_header Host repo.maven.apache.org;\n    proxy_ssl_server_name on;\n\
                 proxy_ssl_name repo.maven.apache.org;\n    proxy_ssl_verify on;\n\
                 proxy_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;\n  }}\n}}\n}}\n",
                ctx.main_preamble(),
                ctx.http_preamble(),
                port = ctx.port,
            )
        });
        MavenMirror {
            nginx,
            bind: bind.to_string(),
        }
    }

    /// What Maven's settings name.
    pub fn url(&self) -> String {
        format!("http://{}:{}/", self.bind, self.nginx.port())
    }

    /// Files served so far (status 200, checksums not counted): what the
    /// builds downloaded from Maven Central.
    pub fn downloads(&self) -> usize {
        let log =
            fs::read_to_string(self.nginx.prefix().join("logs/mirror.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.starts_with("200 GET "))
            .filter(|l| !(l.ends_with(".sha1") || l.ends_with(".md5")))
            .count()
    }
}
