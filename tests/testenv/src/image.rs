//! OCI images made from a directory, without a Docker engine: nothing can be
//! pulled here, so the Cell's sandbox (pause) image and the test apps' images
//! are built from busybox-static and either imported into containerd
//! (`docker save` format) or pushed to a registry over its HTTP API.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::docker::busybox_rootfs;
use crate::run::new_dir;

/// An image: one uncompressed layer plus its config.
#[derive(Debug)]
pub struct Image {
    layer: Vec<u8>,
    config: Vec<u8>,
}

/// One blob's OCI descriptor fields.
struct Blob<'a> {
    media_type: &'a str,
    bytes: &'a [u8],
}

impl Blob<'_> {
    fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.bytes)))
    }

    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest(), "size": self.bytes.len() })
    }
}

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

impl Image {
    /// The files under `root` (as they are, owned by root) with an image
    /// config of `entrypoint` and `env` (`KEY=VALUE`).
    pub fn from_dir(root: &Path, entrypoint: &[&str], env: &[&str]) -> Image {
        let mut b = tar::Builder::new(Vec::new());
        b.mode(tar::HeaderMode::Deterministic);
        b.follow_symlinks(false);
        b.append_dir_all(".", root).expect("tar rootfs");
        let layer = b.into_inner().expect("finish tar");
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Entrypoint": entrypoint, "Env": env, "WorkingDir": "/" },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        });
        Image {
            layer,
            config: serde_json::to_vec(&config).expect("config json"),
        }
    }

    /// busybox-static with `entrypoint`; `files` are extra `(path, contents,
    /// mode)` entries (for example an httpd document root or CGI scripts).
    pub fn busybox(entrypoint: &[&str], env: &[&str], files: &[(&str, &str, u32)]) -> Image {
        let dir = new_dir("image");
        let root = busybox_rootfs(&dir);
        for (path, contents, mode) in files {
            let p = root.join(path.trim_start_matches('/'));
            fs::create_dir_all(p.parent().expect("file has a parent")).expect("mkdir");
            fs::write(&p, contents).expect("write image file");
            fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).expect("chmod image file");
        }
        let img = Image::from_dir(&root, entrypoint, env);
        let _ = fs::remove_dir_all(&dir);
        img
    }

    /// The Kubernetes sandbox image: waits for SIGTERM/SIGINT and exits 0,
    /// reaping children, as `registry.k8s.io/pause` does.
    pub fn pause() -> Image {
        Image::busybox(
            &[
                "/bin/sh",
                "-c",
                "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
            ],
            &[],
            &[],
        )
    }

    /// A tiny web app: busybox httpd on `port`, `GET /healthz` → 200, and
    /// `GET /cgi-bin/whoami` → the pod's host name and `$VERSION`.
    ///
    /// busybox httpd runs as PID 1, which ignores SIGTERM: the pod keeps
    /// serving through its whole termination grace period.
    pub fn web(port: u16) -> Image {
        Image::web_with(&["/bin/httpd", "-f", "-p", &port.to_string(), "-h", "/www"])
    }

    /// [`Image::web`] that stops at once on SIGTERM, as a server without a
    /// graceful shutdown does: a shell as PID 1 exits on TERM and the
    /// kernel kills httpd with it, mid-request or not.
    pub fn web_stopping_on_sigterm(port: u16) -> Image {
        let cmd = format!("trap 'exit 0' TERM; /bin/httpd -f -p {port} -h /www & wait");
        Image::web_with(&["/bin/sh", "-c", &cmd])
    }

    fn web_with(entrypoint: &[&str]) -> Image {
        let script = "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"$(hostname) ${VERSION:-}\"\n";
        // A fixed amount of shell arithmetic per request: CPU load on demand.
        let burn = "#!/bin/sh\ni=0\nwhile [ $i -lt 20000 ]; do i=$((i+1)); done\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"$(hostname) burned\"\n";
        Image::busybox(
            entrypoint,
            &[],
            &[
                ("/www/healthz", "ok\n", 0o644),
                ("/www/index.html", "hello\n", 0o644),
                ("/www/cgi-bin/whoami", script, 0o755),
                ("/www/cgi-bin/burn", burn, 0o755),
            ],
        )
    }

    fn blobs(&self) -> (Blob<'_>, Blob<'_>) {
        (
            Blob {
                media_type: LAYER,
                bytes: &self.layer,
            },
            Blob {
                media_type: CONFIG,
                bytes: &self.config,
            },
        )
    }

    /// The image in `docker save` format, tagged `reference`, written to a
    /// new file (what `ctr images import` reads).
    pub fn save(&self, reference: &str) -> PathBuf {
        let (layer, config) = self.blobs();
        let config_name = format!("{}.json", &config.digest()[7..]);
        let layer_name = format!("{}/layer.tar", &layer.digest()[7..]);
        let manifest =
            json!([{ "Config": config_name, "RepoTags": [reference], "Layers": [layer_name] }]);
        let path = new_dir("imgtar").join("image.tar");
        let mut b = tar::Builder::new(fs::File::create(&path).expect("create image tar"));
        for (name, bytes) in [
            (config_name.as_str(), config.bytes),
            (layer_name.as_str(), layer.bytes),
            (
                "manifest.json",
                &serde_json::to_vec(&manifest).expect("json")[..],
            ),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, bytes)
                .expect("append to image tar");
        }
        b.finish().expect("finish image tar");
        path
    }

    /// Pushes the image to `registry` (`HOST:PORT`, plain HTTP) as
    /// `repo:tag`; `bearer` is a registry token when the registry wants one.
    /// Returns the manifest digest.
    pub fn push(&self, registry: &str, repo: &str, tag: &str, bearer: Option<&str>) -> String {
        let (layer, config) = self.blobs();
        for blob in [&layer, &config] {
            let (status, headers, _) = http(
                registry,
                "POST",
                &format!("/v2/{repo}/blobs/uploads/"),
                bearer,
                None,
                b"",
            );
            assert_eq!(status, 202, "start upload to {registry}/{repo}: {status}");
            let location = header(&headers, "location").expect("upload location");
            let path = location
                .strip_prefix(&format!("http://{registry}"))
                .unwrap_or(&location);
            let sep = if path.contains('?') { '&' } else { '?' };
            let (status, _, body) = http(
                registry,
                "PUT",
                &format!("{path}{sep}digest={}", blob.digest()),
                bearer,
                Some("application/octet-stream"),
                blob.bytes,
            );
            assert_eq!(status, 201, "upload blob: {status} {body}");
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
        });
        let bytes = serde_json::to_vec(&manifest).expect("manifest json");
        let (status, _, body) = http(
            registry,
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            bearer,
            Some(MANIFEST),
            &bytes,
        );
        assert_eq!(status, 201, "put manifest {repo}:{tag}: {status} {body}");
        Blob {
            media_type: MANIFEST,
            bytes: &bytes,
        }
        .digest()
    }
}

fn header(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// One HTTP/1.1 exchange (Connection: close). Returns status, raw headers, body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("set timeout");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = bearer {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send request");
    s.write_all(body).expect("send body");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).expect("read response");
    let text = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}
