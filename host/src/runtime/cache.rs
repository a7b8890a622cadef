//! Compiled artifacts on disk, so a restart does not recompile every plugin.
//!
//! Deserializing an artifact executes its machine code, so the cache only
//! ever reads files this process family wrote: they live in the server's own
//! data directory, are written to a temporary name and renamed into place,
//! and are keyed by the component's SHA-256 and the engine's compatibility
//! hash. An artifact wasmtime refuses (another version or settings) is
//! ignored and replaced.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use wasmtime::component::Component;

pub(super) struct ArtifactCache {
    dir: PathBuf,
    engine_tag: String,
}

impl ArtifactCache {
    pub(super) fn open(dir: &Path, engine: &wasmtime::Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_owned(),
            engine_tag: format!("{:016x}", hasher.finish()),
        })
    }

    fn path(&self, digest: &[u8; 32]) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", hex::encode(digest), self.engine_tag))
    }

    /// The cached artifact for `digest`, if there is a usable one.
    pub(super) fn get(&self, engine: &wasmtime::Engine, digest: &[u8; 32]) -> Option<Component> {
        let path = self.path(digest);
        // Read into memory rather than mapped: a file changed underneath a
        // mapping would crash the process (SIGBUS).
        let bytes = std::fs::read(&path).ok()?;
        // SAFETY: the file was written by `put` below from a component this
        // engine configuration compiled, into the server's private data
        // directory (see the module docs); wasmtime additionally checks the
        // header for version and settings compatibility.
        #[allow(unsafe_code)]
        let loaded = unsafe { Component::deserialize(engine, &bytes) };
        match loaded {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable compiled plugin");
                None
            }
        }
    }

    /// Removes the compiled form of `digest` (a missing file is fine).
    pub(super) fn remove(&self, digest: &[u8; 32]) {
        let path = self.path(digest);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a compiled plugin");
        }
    }

    /// Stores the compiled form of `digest`, atomically.
    pub(super) fn put(&self, digest: &[u8; 32], component: &Component) -> wasmtime::Result<()> {
        let bytes = component.serialize()?;
        let path = self.path(digest);
        let mut tmp = tempfile_in(&self.dir)?;
        tmp.1.write_all(&bytes)?;
        tmp.1.sync_all()?;
        std::fs::rename(&tmp.0, &path)?;
        Ok(())
    }
}

fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = format!(".tmp-{}-{}", std::process::id(), rand::random::<u64>());
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    Ok((path, file))
}
