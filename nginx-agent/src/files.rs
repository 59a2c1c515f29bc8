//! On-disk layout. Domain files live in numbered generation directories;
//! `domains` is a symlink to the live one, so switching a whole set of files
//! is one `rename(2)` and nginx never reads a half-written set.
//!
//! ```text
//! {conf_dir}/nginx.conf            main config (nginx runs with -c this)
//! {conf_dir}/nginx.staging.conf    same, but including the generation under test
//! {conf_dir}/lua/leengine/*.lua    balancer and admin modules
//! {conf_dir}/domains -> gen/N      live domain files
//! {conf_dir}/gen/N/{domain}.conf
//! {conf_dir}/gen/N/_default.conf   404 for unknown hosts on every listen
//! {conf_dir}/gen/N/_generation.conf  marker the agent reads back after a reload
//! {state_dir}/upstreams.dump       last pushed peers (loaded by init_by_lua)
//! {state_dir}/admin.secret         admin endpoint secret (0600, loaded by init_by_lua)
//! ```

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use leengine_slb::render::{
    domain_file_name, domain_of_file_name, render_default_servers, render_generation, DEFAULT_FILE,
    GENERATION_FILE,
};

use crate::state::ROUTER;

/// The lua router's file in a generation.
const ROUTER_FILE: &str = "_router.conf";

#[derive(Clone, Debug)]
pub struct Layout {
    pub conf_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl Layout {
    pub fn main_conf(&self) -> PathBuf {
        self.conf_dir.join("nginx.conf")
    }
    pub fn staging_conf(&self) -> PathBuf {
        self.conf_dir.join("nginx.staging.conf")
    }
    pub fn lua_dir(&self) -> PathBuf {
        self.conf_dir.join("lua")
    }
    pub fn domains_link(&self) -> PathBuf {
        self.conf_dir.join("domains")
    }
    pub fn gen_dir(&self, n: u64) -> PathBuf {
        self.conf_dir.join("gen").join(n.to_string())
    }
    pub fn dump(&self) -> PathBuf {
        self.state_dir.join("upstreams.dump")
    }
    pub fn admin_secret(&self) -> PathBuf {
        self.state_dir.join("admin.secret")
    }

    /// The admin secret, created on first use. It is kept across agent
    /// restarts because a running nginx only rereads it on reload.
    pub fn load_or_create_secret(&self) -> io::Result<String> {
        let path = self.admin_secret();
        if let Ok(text) = std::fs::read_to_string(&path) {
            let text = text.trim();
            if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(text.to_string());
            }
        }
        let mut raw = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
        let secret: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(secret.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        Ok(secret)
    }

    /// Creates the directories, writes the lua modules and makes sure a live
    /// generation exists. Returns the live generation number.
    pub fn prepare(&self) -> io::Result<u64> {
        std::fs::create_dir_all(self.conf_dir.join("gen"))?;
        std::fs::create_dir_all(&self.state_dir)?;
        for (rel, text) in leengine_slb::lua::MODULES {
            let path = self.lua_dir().join(rel);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            write_if_changed(&path, text)?;
        }
        match self.live_gen()? {
            Some(n) => Ok(n),
            None => {
                self.write_gen(0, "0", &BTreeMap::new(), &BTreeMap::new())?;
                self.swap_to(0)?;
                Ok(0)
            }
        }
    }

    fn live_gen(&self) -> io::Result<Option<u64>> {
        match std::fs::read_link(self.domains_link()) {
            Ok(target) => Ok(target
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The domain files nginx currently uses (the last good set).
    pub fn read_live(&self) -> io::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for entry in std::fs::read_dir(self.domains_link())? {
            let entry = entry?;
            let name = entry.file_name();
            let router = name.to_str() == Some(ROUTER_FILE);
            let Some(domain) = name
                .to_str()
                .and_then(domain_of_file_name)
                .or(router.then_some(ROUTER))
            else {
                continue;
            };
            out.insert(domain.to_string(), std::fs::read_to_string(entry.path())?);
        }
        Ok(out)
    }

    /// Writes a complete generation directory: the domain files, the
    /// catch-all servers derived from them and the marker. A file `live`
    /// (the live generation's files) already holds is hard-linked from the
    /// live directory instead of written again.
    pub fn write_gen(
        &self,
        n: u64,
        marker: &str,
        files: &BTreeMap<String, String>,
        live: &BTreeMap<String, String>,
    ) -> io::Result<PathBuf> {
        let dir = self.gen_dir(n);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&dir)?;
        let live_dir = self.domains_link();
        for (domain, text) in files {
            let name = domain_file_name(domain);
            let linked = live.get(domain) == Some(text)
                && std::fs::hard_link(live_dir.join(&name), dir.join(&name)).is_ok();
            if !linked {
                std::fs::write(dir.join(name), text)?;
            }
        }
        let defaults = render_default_servers(files.values().map(String::as_str));
        std::fs::write(dir.join(DEFAULT_FILE), defaults)?;
        std::fs::write(dir.join(GENERATION_FILE), render_generation(marker))?;
        Ok(dir)
    }

    /// Points `domains` at generation `n` atomically and drops the others.
    pub fn swap_to(&self, n: u64) -> io::Result<()> {
        let tmp = self.conf_dir.join("domains.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("gen").join(n.to_string()), &tmp)?;
        std::fs::rename(&tmp, self.domains_link())?;
        for entry in std::fs::read_dir(self.conf_dir.join("gen"))? {
            let entry = entry?;
            if entry.file_name().to_str() != Some(n.to_string().as_str()) {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }
}

/// Replaces a file atomically (readers see the old or the new text).
pub fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Returns whether the file changed.
pub fn write_if_changed(path: &Path, text: &str) -> io::Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(old) if old == text => Ok(false),
        _ => write_atomic(path, text).map(|()| true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_swap_atomically_and_old_ones_go() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout {
            conf_dir: tmp.path().join("conf"),
            state_dir: tmp.path().join("state"),
        };
        assert_eq!(l.prepare().unwrap(), 0);
        assert!(l.read_live().unwrap().is_empty());
        assert!(l.lua_dir().join("leengine/balancer.lua").exists());
        let files: BTreeMap<_, _> = [("a.com".to_string(), "x".to_string())].into();
        l.write_gen(1, "1", &files, &BTreeMap::new()).unwrap();
        l.swap_to(1).unwrap();
        assert_eq!(l.read_live().unwrap(), files);
        // Unchanged files are linked, not written again.
        use std::os::unix::fs::MetadataExt;
        let mut next = files.clone();
        next.insert(ROUTER.to_string(), "# router".to_string());
        l.write_gen(2, "2", &next, &files).unwrap();
        let ino = |n: u64| {
            std::fs::metadata(l.gen_dir(n).join("a.com.conf"))
                .unwrap()
                .ino()
        };
        assert_eq!(ino(1), ino(2));
        l.swap_to(2).unwrap();
        assert_eq!(l.read_live().unwrap(), next);
        l.write_gen(1, "1", &files, &BTreeMap::new()).unwrap();
        l.swap_to(1).unwrap();
        assert!(!l.gen_dir(0).exists());
        assert_eq!(l.prepare().unwrap(), 1);
        assert!(l.gen_dir(1).join(GENERATION_FILE).exists());
    }

    #[test]
    fn the_admin_secret_is_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout {
            conf_dir: tmp.path().join("conf"),
            state_dir: tmp.path().to_path_buf(),
        };
        let s = l.load_or_create_secret().unwrap();
        assert_eq!(s.len(), 64);
        let mode = std::fs::metadata(l.admin_secret())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(l.load_or_create_secret().unwrap(), s);
        std::fs::write(l.admin_secret(), "short").unwrap();
        assert_ne!(l.load_or_create_secret().unwrap(), s);
    }
}
